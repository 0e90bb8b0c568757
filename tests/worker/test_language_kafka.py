"""Language identification on the Kafka front door, on the real broker: outputs carry `language`,
each tenant's `unsupported_language` mode is applied (refuse, score, hold; Kafka's default is
score), the shadow's outputs say the same, detection runs on the tokenizer thread, and with
detection off nothing of it remains."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from schemas import DeadLetterHeaders, ScoredComment, ThresholdPolicy
from testing.in_process import settings_for
from testing.kafka import comment, committed_offsets, create_topics, produce, read_all
from testing.models import LABELS
from testing.topics import Topics
from worker.app import Worker
from worker.backends.model import ServedModel, load_from_settings, load_served_model
from worker.pipeline.language import Detection, LanguageDetector

pytestmark = pytest.mark.integration

ENGLISH = "Thanks for fixing the citation, much appreciated. See you on the talk page."
FRENCH = "Va te faire foutre, espèce de connard, personne ne lit tes conneries"
# thresholds 0: every label is flagged, so what `hold` moves to `held` is known
POLICY = {
    "version": "lang-1",
    "thresholds": dict.fromkeys(LABELS, 0.0),
    "tenants": {
        "a": {"unsupported_language": "refuse"},
        "b": {"unsupported_language": "score"},
        "c": {"unsupported_language": "hold"},
    },
}
TENANTS = ["a", "b", "c", None]  # None: no tenant, Kafka's default mode (score)


class ThreadRecordingDetector(LanguageDetector):
    """The real detector, noting the name of each thread it is called on."""

    threads: set[str]

    def detect_all(self, texts: list[str]) -> list[Detection]:
        self.threads.add(threading.current_thread().name)
        return super().detect_all(texts)


def messages() -> dict[str, dict[str, Any]]:
    """An English and a French comment for each tenant (and for none)."""
    sent = {}
    for tenant in TENANTS:
        for language, text in (("en", ENGLISH), ("fr", FRENCH)):
            metadata = {} if tenant is None else {"tenant": tenant}
            sent[f"{tenant or 'none'}-{language}"] = {"text": text, "metadata": metadata}
    return sent


async def run(
    bootstrap: str,
    topics: Topics,
    served: ServedModel,
    sent: dict[str, dict[str, Any]],
    outputs: int,
    dead: int,
    *,
    shadow: ServedModel | None = None,
    policy: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[Worker, list, list, list]:
    """Produce `sent`, run an in-process worker until `outputs` outputs, `dead` dead letters (and
    with a shadow, `outputs` shadow outputs) are there and every offset is committed; stop it."""
    shadow_topic = f"{topics.output}-shadow"
    if shadow is not None:
        await create_topics(bootstrap, {shadow_topic: 1})
    await produce(bootstrap, topics.input, [comment(k, **v) for k, v in sent.items()])
    spec = None if policy is None else ThresholdPolicy.model_validate(policy)
    worker = Worker(settings_for(bootstrap, topics, **settings), served, shadow=shadow, policy=spec)
    running = asyncio.create_task(worker.run())
    try:
        out = await read_all(bootstrap, topics.output, outputs, settle=0.3)
        dlq = await read_all(bootstrap, topics.dlq, dead, settle=0.3, partial=dead == 0)
        shadowed = []
        if shadow is not None:
            shadowed = await read_all(bootstrap, shadow_topic, outputs, settle=0.3)

        async def all_committed() -> bool:
            offsets = await committed_offsets(bootstrap, topics.group, topics.input)
            return sum(c or 0 for c in offsets.values()) == len(sent)

        committed = False
        for _ in range(100):  # nothing lost: a refused record's offset is acknowledged too
            if committed := await all_committed():
                break
            await asyncio.sleep(0.2)
        assert committed, "not every offset was committed"
    finally:
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
    return worker, out, dlq, shadowed


def metric(worker: Worker, name: str, **labels: str) -> float:
    value = worker.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_outputs_carry_language_and_each_tenant_mode_is_applied(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, tiny_shadow_model_dir: Path
) -> None:
    model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    recording = ThreadRecordingDetector()
    recording.threads = set()
    model = dataclasses.replace(model, language=recording)
    shadow = load_served_model(tiny_shadow_model_dir, device="cpu", precision="fp32")
    sent = messages()
    worker, outputs, dead, shadowed = await run(
        kafka_bootstrap, topics, model, sent, len(sent) - 1, 1, shadow=shadow, policy=POLICY,
        shadow_queue_batches=64,
    )  # fmt: skip

    # detection ran on the tokenizer thread, never on the event loop's
    assert recording.threads and all(name.startswith("tokenize") for name in recording.threads)

    # tenant a refuses French: one dead letter, its kind and a detail naming both languages
    [refused] = dead
    assert refused.key == b"a-fr" and orjson.loads(refused.value)["text"] == FRENCH
    headers = DeadLetterHeaders.from_kafka(refused.headers)
    assert headers.error_kind == "unsupported_language"
    assert "language is fr" in headers.error_detail and "serves en" in headers.error_detail
    assert "lang-1" in headers.error_detail

    parsed = {r.key.decode(): ScoredComment.model_validate_json(r.value) for r in outputs}
    assert sorted(parsed) == sorted(k for k in sent if k != "a-fr")
    for key, message in parsed.items():
        assert message.language is not None and message.policy_version == "lang-1"
        if key.endswith("-en"):  # English: unaffected whatever the tenant's mode
            assert (message.language.code, message.language.supported) == ("en", True)
            assert message.flagged == LABELS and message.held is None
            continue
        assert message.language.code == "fr" and message.language.reliable
        assert not message.language.supported and message.language.confidence >= 0.7
        if key == "c-fr":  # hold: nothing flagged, the flags it would have had are held
            assert message.flagged == [] and message.held == LABELS
        else:  # b (score) and no tenant (Kafka's default): scored, flagged, marked
            assert message.flagged == LABELS and message.held is None
    raw = orjson.loads(next(r.value for r in outputs if r.key == b"b-fr"))
    assert set(raw["language"]) == {"code", "confidence", "reliable", "supported"}
    assert "held" not in raw

    # the shadow's outputs say the same of the language, and hold its flags too
    shadow_parsed = {r.key.decode(): ScoredComment.model_validate_json(r.value) for r in shadowed}
    assert sorted(shadow_parsed) == sorted(parsed)
    for key, message in shadow_parsed.items():
        assert message.language == parsed[key].language
        assert (message.flagged == []) == (key == "c-fr")
        assert (message.held is not None) == (key == "c-fr")

    # metrics: by language and front door, by mode
    count = "moderation_comments_by_language_total"
    assert metric(worker, count, front_door="kafka", language="en") == 4
    assert metric(worker, count, front_door="kafka", language="fr") == 4
    assert metric(worker, count, front_door="http", language="fr") == 0  # exported at 0
    modes = "moderation_unsupported_language_total"
    applied = [
        metric(worker, modes, front_door="kafka", mode=m) for m in ("refuse", "score", "hold")
    ]
    assert applied == [1, 2, 1]
    dead_lettered = "moderation_messages_dead_lettered_total"
    assert metric(worker, dead_lettered, reason="unsupported_language") == 1


async def test_detection_off_no_detector_no_language_no_refusal(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    settings = settings_for(
        kafka_bootstrap, topics, model=str(tiny_model_dir), language_detection=False
    )
    model = load_from_settings(settings)
    assert model.language is None  # no detector loaded
    sent = messages()
    worker, outputs, dead, _ = await run(
        kafka_bootstrap, topics, model, sent, len(sent), 0, policy=POLICY,
        model=str(tiny_model_dir), language_detection=False,
    )  # fmt: skip
    assert dead == []  # tenant a's French is scored: nothing is known of its language
    for record in outputs:
        raw = orjson.loads(record.value)
        assert "language" not in raw and "held" not in raw
        assert raw["flagged"] == LABELS
    samples = [
        s
        for family in worker.metrics.registry.collect()
        if family.name in ("moderation_comments_by_language", "moderation_unsupported_language")
        for s in family.samples
    ]
    assert samples == []
