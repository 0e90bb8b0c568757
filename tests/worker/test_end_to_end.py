"""The real worker process against the real broker: scores, dead letters, offsets, metrics."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas import DeadLetterHeaders, ScoredComment
from testing.http import metric_sum
from testing.kafka import comment, produce, read_all, wait_committed
from testing.models import LABELS
from testing.topics import Topics
from testing.worker_process import WorkerFactory
from worker.backends.model import load_served_model

pytestmark = pytest.mark.integration

TEXTS = [
    "Thanks for fixing the citation, much appreciated.",
    "You are a complete idiot and everybody here knows it.",
    "I will find you and hurt you.",
    "Please stop vandalizing the page about the river Thames!!",
    "what a load of garbage, go away",
    "Ünïcödé and emoji 🎉 are fine too",
    "",
    "short",
    "a much longer comment " * 40,
]

BAD_RECORDS: list[tuple[bytes | None, bytes | None, str]] = [
    (b"bad-utf8", b'{"id": "x", "text": "\xff\xfe"}', "invalid_utf8"),
    (b"bad-json", b"{not json", "invalid_json"),
    (b"array", b"[1, 2, 3]", "not_an_object"),
    (None, b'"just a string"', "not_an_object"),
    (b"no-id", b'{"text": "hello"}', "invalid_field"),
    (b"null-text", b'{"id": "n", "text": null}', "invalid_field"),
    (b"long-id", orjson.dumps({"id": "i" * 257, "text": "hi"}), "invalid_field"),
    (b"huge", orjson.dumps({"id": "huge", "text": "x" * 5000}), "text_too_large"),
    (b"nan", b'{"id": "nan", "text": "t", "metadata": {"v": NaN}}', "invalid_json"),
]


def good_messages(count: int) -> list[tuple[bytes, bytes]]:
    return [
        comment(f"c{i}", TEXTS[i % len(TEXTS)], metadata={"n": i}, created_at=1_700_000_000_000)
        for i in range(count)
    ]


def test_scores_dead_letters_offsets_and_metrics(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory, tiny_model_dir: Path
) -> None:
    good = good_messages(45)
    bad = [(k, v) for k, v, _ in BAD_RECORDS]
    asyncio.run(produce(kafka_bootstrap, topics.input, good + bad))

    worker = worker_process(
        topics,
        extra_env={"MODERATION_MAX_BATCH_SIZE": "8", "MODERATION_MAX_TEXT_BYTES": "4096"},
    )
    outputs = asyncio.run(read_all(kafka_bootstrap, topics.output, len(good), settle=1.0))
    dead = asyncio.run(read_all(kafka_bootstrap, topics.dlq, len(bad), settle=0.5))

    # Every good message scored exactly once, exactly as the model scores it alone.
    assert len(outputs) == len(good)
    scorer = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    sent = {k: orjson.loads(v) for k, v in good}
    for record in outputs:
        message = ScoredComment.model_validate_json(record.value)
        original = sent[record.key]
        assert message.id == original["id"] == record.key.decode()
        assert message.metadata == original["metadata"]
        assert list(message.scores) == LABELS
        alone = scorer.score([original["text"]])[0]
        np.testing.assert_allclose([message.scores[label] for label in LABELS], alone, atol=1e-5)
        assert message.flagged == [x for x in LABELS if message.scores[x] >= 0.5]
        assert message.model.name == "tiny-test-bert" and message.model.version == "seed-0"
        assert abs(message.scored_at - time.time() * 1000) < 120_000
    assert {r.key for r in outputs} == set(sent)

    # Every bad message dead-lettered once, bytes untouched, with its reason and origin.
    assert len(dead) == len(bad)
    by_value = {value: (key, reason) for key, value, reason in BAD_RECORDS}
    for record in dead:
        key, reason = by_value[record.value]
        headers = DeadLetterHeaders.from_kafka(record.headers)
        assert record.key == key
        assert headers.error_kind == reason, headers.error_detail
        assert headers.error_detail
        assert headers.source_topic == topics.input
        assert 0 <= headers.source_partition < 3 and headers.source_offset >= 0

    # Offsets: every partition committed up to its end.
    total = len(good) + len(bad)
    committed = wait_committed(kafka_bootstrap, topics.group, topics.input, total)
    assert sum(c or 0 for c in committed.values()) == total, committed

    # Health and metrics.
    assert worker.get("/healthz").status == 200
    assert worker.get("/readyz").status == 200
    body = worker.get("/metrics").body
    assert metric_sum(body, "moderation_messages_consumed_total") == total
    assert metric_sum(body, "moderation_messages_scored_total") == len(good)
    assert metric_sum(body, "moderation_messages_dead_lettered_total") == len(bad)
    assert 'moderation_messages_dead_lettered_total{reason="invalid_field"} 3.0' in body
    assert metric_sum(body, "moderation_batch_size_count") >= len(good) / 8
    assert metric_sum(body, "moderation_end_to_end_latency_seconds_count") == len(good)
    assert metric_sum(body, "moderation_inference_seconds_count") > 0

    # the latency budget: every consumed record waited for its fetch, every scored one passed
    # each later stage once, and those stages fit inside its end-to-end latency
    def stage(name: str, series: str) -> float:
        return metric_sum(body, f'moderation_stage_seconds_{series}{{stage="{name}"}}')

    assert stage("fetch_wait", "count") == total
    later = ("intake", "queue_wait", "forward", "publish", "ack")
    for name in later:
        assert stage(name, "count") == len(good), name
        assert stage(name, "sum") > 0, name
    after_fetch = sum(stage(name, "sum") for name in later)
    end_to_end = metric_sum(body, "moderation_end_to_end_latency_seconds_sum")
    assert after_fetch <= end_to_end + 0.001 * len(good)
    assert metric_sum(body, "moderation_tokenization_seconds_count") > 0
    assert 'moderation_model_info{device="cpu"' in body and 'name="tiny-test-bert"' in body
    assert metric_sum(body, "moderation_consumer_lag") == 0
    assert metric_sum(body, "moderation_consumer_lag_seconds") == 0
    assert metric_sum(body, "moderation_ready") == 1
    assert worker.terminate() == 0
