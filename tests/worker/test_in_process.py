"""The worker run in-process, where a test can swap the model: failures, readiness."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from transformers import BatchEncoding

from schemas import DeadLetterHeaders, ErrorKind
from testing.http import http_get
from testing.kafka import comment, produce, read_all
from testing.ports import free_port
from testing.topics import Topics
from worker.app import Worker
from worker.config import Settings, load_settings
from worker.infer import Scorer

pytestmark = pytest.mark.integration


class FailsOnPoison(Scorer):
    """A real scorer whose forward pass fails on any batch containing the word 'POISON'."""

    def tokenize(self, texts: list[str]) -> BatchEncoding:
        if any("POISON" in text for text in texts):
            raise RuntimeError("simulated kernel failure")
        return super().tokenize(texts)


def settings_for(bootstrap: str, topics: Topics, **extra: object) -> Settings:
    return load_settings(
        bootstrap_servers=bootstrap, input_topic=topics.input, output_topic=topics.output,
        dlq_topic=topics.dlq, group_id=topics.group, device="cpu", metrics_host="127.0.0.1",
        metrics_port=free_port(), commit_interval_ms=200, **extra,
    )  # fmt: skip


async def test_a_text_the_model_fails_on_is_dead_lettered_and_the_rest_scored(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    base = Scorer.load(tiny_model_dir, device="cpu")
    scorer = FailsOnPoison(base.model, base.tokenizer, base.device, base.name, base.version)
    messages = [comment(f"m{i}", f"ordinary comment {i}") for i in range(9)]
    messages.insert(4, comment("poison", "this one is POISON"))
    await produce(kafka_bootstrap, topics.input, messages)

    worker = Worker(settings_for(kafka_bootstrap, topics, max_batch_size=16), scorer=scorer)
    running = asyncio.create_task(worker.run())
    outputs = await read_all(kafka_bootstrap, topics.output, 9, settle=0.5)
    dead = await read_all(kafka_bootstrap, topics.dlq, 1, settle=0.5)
    worker.request_stop()
    assert await asyncio.wait_for(running, 30) == 0

    assert sorted(r.key for r in outputs) == sorted(k for k, _ in messages if k != b"poison")
    assert len(dead) == 1 and dead[0].key == b"poison"
    headers = DeadLetterHeaders.from_kafka(dead[0].headers)
    assert headers.error_kind == ErrorKind.INFERENCE_FAILED
    assert "simulated kernel failure" in headers.error_detail
    errors = worker.metrics.errors.labels("inference")._value.get()
    assert errors >= 2  # the batch, then the poisoned text alone


async def test_not_ready_until_model_loaded_and_group_joined(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    settings = settings_for(kafka_bootstrap, topics)
    worker = Worker(settings)
    await worker.http.start(settings.metrics_host, settings.metrics_port)
    url = f"http://127.0.0.1:{worker.http.port}"
    try:
        health, ready = await asyncio.gather(
            asyncio.to_thread(http_get, url + "/healthz"),
            asyncio.to_thread(http_get, url + "/readyz"),
        )
        assert health.status == 200
        assert ready.status == 503  # no model, no group yet
        worker.scorer = Scorer.load(tiny_model_dir, device="cpu")
        assert (await asyncio.to_thread(http_get, url + "/readyz")).status == 503
        worker._partitions_assigned(set())  # what the rebalance listener calls on joining
        assert (await asyncio.to_thread(http_get, url + "/readyz")).status == 200
        worker.fail(RuntimeError("publish failed"))
        assert (await asyncio.to_thread(http_get, url + "/readyz")).status == 503
    finally:
        await worker.http.stop()


async def test_unreachable_broker_exits_nonzero(topics: Topics, tiny_model_dir: Path) -> None:
    dead_port = free_port()
    settings = settings_for(f"127.0.0.1:{dead_port}", topics)
    scorer = Scorer.load(tiny_model_dir, device="cpu")
    assert await asyncio.wait_for(Worker(settings, scorer=scorer).run(), 120) == 1
