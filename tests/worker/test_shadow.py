"""Shadow scoring on the real broker: shadow outputs and agreement metrics, a shadow with its own
tokenizer, and a failing or slow shadow leaving the primary's outputs, dead letters and commits
as they would be without it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from schemas import DeadLetterHeaders, ScoredComment
from testing.in_process import settings_for
from testing.kafka import comment, committed_offsets, create_topics, produce, read_all
from testing.models import LABELS, SAMPLE_TEXTS
from testing.topics import Topics
from testing.worker_process import refusal_line
from worker.app import Worker
from worker.backends.backend import Backend, TokenBatch
from worker.backends.model import ServedModel, load_served_model
from worker.shadow import same_tokenizer

BAD = [(b"bad-json", b"{not json"), (b"no-id", b'{"text": "hello"}')]


class Failing(Backend):
    """A backend that raises on every forward pass (after warm-up)."""

    def __init__(self, real: Backend) -> None:
        self.kind, self.device, self.precision = real.kind, real.device, real.precision
        self.labels = real.labels
        self.calls = 0

    def warm_up(self, shapes: object) -> None:
        pass

    def infer(self, batch: TokenBatch) -> np.ndarray:
        self.calls += 1
        raise RuntimeError("shadow kernel failure")


class Slow(Backend):
    """The real backend, `delay_s` slower per forward pass."""

    def __init__(self, real: Backend, delay_s: float) -> None:
        self.real, self.delay_s = real, delay_s
        self.kind, self.device, self.precision = real.kind, real.device, real.precision
        self.labels = real.labels

    def warm_up(self, shapes: object) -> None:
        pass

    def infer(self, batch: TokenBatch) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.real.infer(batch)


def load(path: Path) -> ServedModel:
    return load_served_model(path, device="cpu", precision="fp32")


def messages(count: int) -> dict[str, str]:
    return {f"c{i}": SAMPLE_TEXTS[i % len(SAMPLE_TEXTS)] + f" {i}" for i in range(count)}


async def run_worker(
    bootstrap: str,
    topics: Topics,
    primary: ServedModel,
    shadow: ServedModel | None,
    texts: dict[str, str],
    shadow_expected: int,
    **settings: Any,
) -> tuple[Worker, list, list, list]:
    """Produce `texts` and BAD, run a worker until every output and dead letter is there (and
    `shadow_expected` shadow outputs), stop it; (worker, outputs, dead letters, shadow outputs)."""
    shadow_topic = f"{topics.output}-shadow"
    await create_topics(bootstrap, {shadow_topic: 1})
    tenants = ["kids", "adults"]
    good = [
        comment(key, text, metadata={"tenant": tenants[i % 2]})
        for i, (key, text) in enumerate(texts.items())
    ]
    await produce(bootstrap, topics.input, good + BAD)
    worker = Worker(settings_for(bootstrap, topics, **settings), primary, shadow=shadow)
    running = asyncio.create_task(worker.run())
    try:
        outputs = await read_all(bootstrap, topics.output, len(texts), settle=0.3)
        dead = await read_all(bootstrap, topics.dlq, len(BAD), settle=0.3)
        shadowed = await read_all(
            bootstrap, shadow_topic, shadow_expected, timeout=60 if shadow_expected else 1,
            settle=0.3, partial=not shadow_expected,
        )  # fmt: skip
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
    return worker, outputs, dead, shadowed


def check_primary(
    outputs: list, dead: list, primary: ServedModel, texts: dict[str, str]
) -> dict[str, ScoredComment]:
    """The primary's outputs are those of the primary alone: every key once, its scores and its
    thresholds' flags; the dead letters are the bad records with their reasons."""
    assert sorted(r.key.decode() for r in outputs) == sorted(texts)
    parsed = {r.key.decode(): ScoredComment.model_validate_json(r.value) for r in outputs}
    contract = primary.contract
    for key, message in parsed.items():
        assert message.model.version == contract.model_version
        assert message.policy_version == "model"
        alone = primary.score([texts[key]])[0]
        np.testing.assert_allclose([message.scores[x] for x in LABELS], alone, atol=1e-5)
        assert message.flagged == contract.flagged(alone)
    reasons = {r.key: DeadLetterHeaders.from_kafka(r.headers).error_kind.value for r in dead}
    assert reasons == {b"bad-json": "invalid_json", b"no-id": "invalid_field"}
    return parsed


@pytest.mark.integration
async def test_shadow_outputs_and_agreement_metrics(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, tiny_shadow_model_dir: Path
) -> None:
    primary, shadow = load(tiny_model_dir), load(tiny_shadow_model_dir)
    texts = messages(40)
    worker, outputs, dead, shadowed = await run_worker(
        kafka_bootstrap, topics, primary, shadow, texts, len(texts),
        max_batch_size=8, shadow_queue_batches=64,
    )  # fmt: skip
    assert worker.shadow is not None and worker.shadow.same_tokens
    primary_out = check_primary(outputs, dead, primary, texts)
    assert sorted(r.key.decode() for r in shadowed) == sorted(texts)
    flips = {(label, d): 0 for label in LABELS for d in ("shadow_only", "primary_only")}
    diffs: dict[str, list[float]] = {label: [] for label in LABELS}
    for record in shadowed:
        key = record.key.decode()
        message = ScoredComment.model_validate_json(record.value)
        assert (message.model.name, message.model.version) == ("tiny-test-bert", "seed-1")
        assert message.id == key and message.metadata == primary_out[key].metadata
        alone = shadow.score([texts[key]])[0]
        np.testing.assert_allclose([message.scores[x] for x in LABELS], alone, atol=1e-5)
        assert message.flagged == shadow.contract.flagged(alone)
        mine, theirs = set(primary_out[key].flagged), set(message.flagged)
        for label in LABELS:
            flips[label, "shadow_only"] += label in theirs - mine
            flips[label, "primary_only"] += label in mine - theirs
            diffs[label].append(abs(primary_out[key].scores[label] - message.scores[label]))
    metrics = worker.metrics
    assert sum(flips.values()) > 0  # two random models: they do disagree somewhere
    for (label, direction), count in flips.items():
        assert metrics.shadow_flips.labels(label, direction)._value.get() == count
    for label in LABELS:
        histogram = metrics.shadow_score_diff.labels(label)
        assert histogram._sum.get() == pytest.approx(sum(diffs[label]), abs=1e-4)
    assert metrics.shadow_scored._value.get() == len(texts)
    assert metrics.shadow_dropped._value.get() == 0


@pytest.mark.integration
async def test_a_shadow_with_its_own_tokenizer_tokenizes_separately(
    kafka_bootstrap: str,
    topics: Topics,
    tiny_model_dir: Path,
    tiny_shadow_model_dir: Path,
    tmp_path: Path,
) -> None:
    """A cased copy of the shadow's tokenizer: capitalized words become [UNK] for its uncased
    vocabulary, so scoring the primary's ids would give other scores."""
    cased = Path(shutil.copytree(tiny_shadow_model_dir, tmp_path / "cased"))
    spec = json.loads((cased / "tokenizer.json").read_text())
    spec["normalizer"]["lowercase"] = False
    (cased / "tokenizer.json").write_text(json.dumps(spec))
    primary, shadow = load(tiny_model_dir), load(cased)
    assert not same_tokenizer(primary.tokenizer, shadow.tokenizer)
    texts = {"k0": "You ARE a Complete IDIOT", "k1": "Hello World", "k2": "fine, thanks"}
    _, outputs, dead, shadowed = await run_worker(
        kafka_bootstrap, topics, primary, shadow, texts, len(texts)
    )
    check_primary(outputs, dead, primary, texts)
    differs = False
    for record in shadowed:
        text = texts[record.key.decode()]
        scores = ScoredComment.model_validate_json(record.value).scores
        own = shadow.score([text])[0]
        np.testing.assert_allclose([scores[x] for x in LABELS], own, atol=1e-5)
        with_primary_ids = shadow.infer(primary.tokenizer.encode([text]))[0]
        differs |= not np.allclose(own, with_primary_ids, atol=1e-4)
    assert differs


@pytest.mark.integration
async def test_a_failing_shadow_leaves_the_primary_unchanged(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, tiny_shadow_model_dir: Path
) -> None:
    primary, real_shadow = load(tiny_model_dir), load(tiny_shadow_model_dir)
    backend = Failing(real_shadow.backend)
    shadow = dataclasses.replace(real_shadow, backend=backend)
    texts = messages(30)
    worker, outputs, dead, shadowed = await run_worker(
        kafka_bootstrap, topics, primary, shadow, texts, 0, max_batch_size=8
    )
    check_primary(outputs, dead, primary, texts)
    assert shadowed == []
    assert backend.calls >= 1
    metrics = worker.metrics
    assert metrics.shadow_failures.labels("infer")._value.get() == backend.calls
    assert metrics.shadow_scored._value.get() == 0
    assert metrics.errors.labels("inference")._value.get() == 0  # the primary saw no failure
    committed = await committed_offsets(kafka_bootstrap, topics.group, topics.input)
    assert sum(offset or 0 for offset in committed.values()) == len(texts) + len(BAD)


@pytest.mark.integration
async def test_a_slow_shadow_is_dropped_not_waited_for(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, tiny_shadow_model_dir: Path
) -> None:
    """A shadow 0.5 s per forward pass with a queue of one batch: the primary scores every
    comment while the shadow is still far behind, and what the shadow could not take is
    dropped and counted."""
    primary, real_shadow = load(tiny_model_dir), load(tiny_shadow_model_dir)
    shadow = dataclasses.replace(real_shadow, backend=Slow(real_shadow.backend, 0.5))
    texts = messages(120)
    shadow_topic = f"{topics.output}-shadow"
    await create_topics(kafka_bootstrap, {shadow_topic: 1})
    await produce(kafka_bootstrap, topics.input, [comment(k, t) for k, t in texts.items()])
    settings = settings_for(
        kafka_bootstrap, topics, max_batch_size=4, shadow_queue_batches=1, max_poll_records=4
    )
    worker = Worker(settings, primary, shadow=shadow)
    running = asyncio.create_task(worker.run())
    try:
        outputs = await read_all(kafka_bootstrap, topics.output, len(texts), settle=0.2)
        metrics = worker.metrics
        scored, dropped = metrics.shadow_scored._value.get(), metrics.shadow_dropped._value.get()
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
    assert sorted(r.key.decode() for r in outputs) == sorted(texts)
    assert dropped > 0 and scored < len(texts) / 2, (scored, dropped)
    committed = await committed_offsets(kafka_bootstrap, topics.group, topics.input)
    assert sum(offset or 0 for offset in committed.values()) == len(texts)
    assert orjson.loads(outputs[0].value)["policy_version"] == "model"


def test_the_worker_refuses_a_shadow_it_cannot_compare(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A shadow whose labels are not the primary's, or that does not exist: one line, exit 2."""
    other = Path(shutil.copytree(tiny_model_dir, tmp_path / "other-labels"))
    config = json.loads((other / "config.json").read_text())
    config["id2label"]["0"] = "spam"
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    config["label_thresholds"] = dict.fromkeys(config["label2id"], 0.5)
    (other / "config.json").write_text(json.dumps(config))
    for shadow, needle in (
        (other, "are not the primary's"),
        (tmp_path / "missing", "does not exist"),
    ):
        line = refusal_line(
            {"MODERATION_MODEL": str(tiny_model_dir), "MODERATION_SHADOW_MODEL": str(shadow)}
        )
        assert line.startswith("moderation-worker: shadow model: ") and needle in line, line
