"""Live quality on the real broker: a worker scores comments, moderators' decisions come back on
the feedback topic (some carrying the scores, some relying on the worker's id -> scores cache,
some through suggestscore), and its /metrics count exactly the expected true and false
positives and negatives per tenant x label under the policy in force; garbage on the feedback
topic is counted and skipped while the primary keeps scoring."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from schemas import Feedback
from testing.http import http_post, metric_sample
from testing.kafka import comment, committed_offsets, create_topics, produce, read_all
from testing.ports import free_port
from testing.topics import Topics
from testing.wait import wait_until
from testing.worker_process import WorkerFactory, WorkerProcess

pytestmark = pytest.mark.integration

TEXTS = [
    "you are an idiot", "thanks for the edit", "what a stupid take", "I disagree politely",
    "shut up, moron", "great article", "this is garbage writing", "see you at the meetup",
    "nobody asked you", "lovely photos", "go away troll", "interesting point about rivers",
]  # fmt: skip
CELLS = {("true", "1"): "tp", ("true", "0"): "fp", ("false", "1"): "fn", ("false", "0"): "tn"}


def decided(
    id_: str, tenant: str | None, labels: dict[str, int], scores: dict[str, float] | None = None
) -> tuple[bytes, bytes]:
    record = Feedback(
        id=id_, labels=labels, tenant=tenant, source="test-moderators", decided_at=0, scores=scores
    )
    return id_.encode(), record.model_dump_json(exclude_none=True).encode()


def body(worker: WorkerProcess) -> str:
    return worker.get("/metrics").body


def counts(text: str, tenant: str, label: str) -> dict[str, float]:
    return {
        cell: metric_sample(text, "moderation_feedback_decisions_total", tenant=tenant,
                            label=label, flagged=flagged, decision=decision)
        for (flagged, decision), cell in CELLS.items()
    }  # fmt: skip


def records_read(worker: WorkerProcess) -> float:
    return metric_sample(body(worker), "moderation_feedback_records_total")


def wait_assigned(worker: WorkerProcess) -> None:
    """The feedback group's consumer has its partition (it starts at the latest offset)."""
    wait_until(
        lambda: metric_sample(body(worker), "moderation_feedback_consumer_partitions") >= 1,
        60,
        message=lambda: f"feedback consumer never assigned:\n{worker.log()[-3000:]}",
    )


def test_a_live_workers_feedback_metrics_count_each_decision_per_tenant_and_label(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory, tmp_path: Path
) -> None:
    feedback_topic = f"fb-{topics.group}"
    asyncio.run(create_topics(kafka_bootstrap, {feedback_topic: 2}))
    policy = tmp_path / "policy.json"
    policy.write_bytes(orjson.dumps({"version": "v1", "tenants": {"forum": {}}}))
    api_port = free_port()
    worker = worker_process(
        topics,
        extra_env={
            "MODERATION_POLICY_FILE": str(policy),
            "MODERATION_POLICY_POLL_INTERVAL_S": "0.2",
            "MODERATION_FEEDBACK_TOPIC": feedback_topic,
            "MODERATION_HTTP_API_PORT": str(api_port),
        },
    )
    # 1. the worker scores comments: half of them are forum's (tenant in the metadata)
    tenant_of = {f"c{i}": ("forum" if i % 2 else None) for i in range(len(TEXTS))}
    comments = [
        comment(f"c{i}", text, **({"metadata": {"tenant": "forum"}} if tenant_of[f"c{i}"] else {}))
        for i, text in enumerate(TEXTS)
    ]
    asyncio.run(produce(kafka_bootstrap, topics.input, comments))
    outputs = asyncio.run(read_all(kafka_bootstrap, topics.output, len(TEXTS)))
    scores = {out["id"]: out["scores"] for out in (orjson.loads(r.value) for r in outputs)}
    # 2. thresholds that split these scores (the tiny model's are arbitrary), hot-reloaded
    toxic = sorted(s["toxic"] for s in scores.values())
    insult = sorted(s["insult"] for s in scores.values())
    thresholds = {
        None: {"toxic": float(np.median(toxic)), "insult": float(np.median(insult))},
        "forum": {"toxic": toxic[3] + 1e-6, "insult": insult[-3] + 1e-6},
    }
    policy.write_bytes(
        orjson.dumps({
            "version": "v2", "thresholds": thresholds[None], "precision_targets": {"toxic": 0.8},
            "tenants": {"forum": {"thresholds": thresholds["forum"],
                                  "precision_targets": {"toxic": 0.9}}},
        })
    )  # fmt: skip
    wait_until(
        lambda: metric_sample(body(worker), "moderation_policy_reloads_total") >= 1,
        30,
        message=lambda: f"policy v2 never reloaded:\n{worker.log()[-3000:]}",
    )
    wait_assigned(worker)

    # 3. decisions: by the cache (no scores), carrying scores, on unknown comments, garbage
    expected: dict[tuple[str, str], dict[str, int]] = {}

    def expect(tenant: str | None, label: str, score: float, decision: int) -> None:
        threshold = thresholds[tenant if tenant == "forum" else None][label]
        flagged = "true" if score >= threshold else "false"
        cell = CELLS[(flagged, str(decision))]
        key = (tenant or "default", label)
        expected.setdefault(key, dict.fromkeys(CELLS.values(), 0))[cell] += 1

    records = []
    for i, (id_, tenant) in enumerate(tenant_of.items()):
        judged = {"toxic": i % 3 % 2, "insult": (i // 2) % 2} if i % 4 else {"toxic": i % 3 % 2}
        records.append(decided(id_, tenant, judged))  # scores from the worker's cache
        for label, decision in judged.items():
            expect(tenant, label, scores[id_][label], decision)
    carried = [(0.95, 1), (0.95, 0), (0.01, 1), (0.01, 0), (0.97, 1)]
    for j, (score, decision) in enumerate(carried):  # never scored here: scores carried
        tenant = "forum" if j % 2 else None
        records.append(decided(f"ext-{j}", tenant, {"toxic": decision}, {"toxic": score}))
        expect(tenant, "toxic", score, decision)
    # a tenant the policy does not name: `other`, under the default thresholds
    records.append(decided("ext-o", "elsewhere", {"toxic": 1}, {"toxic": 0.99}))
    expected[("other", "toxic")] = {"tp": 1, "fp": 0, "fn": 0, "tn": 0}
    records.append(decided("never-scored", "forum", {"toxic": 1, "threat": 0}))  # unscored
    records.append(decided("ext-x", None, {"no_such_label": 1}))  # no known label
    records.append((b"bad", b'{"id": "bad", "labels": {"toxic": 7}}'))  # invalid
    records.append((b"bad2", b"\xff\xfe"))  # invalid
    asyncio.run(produce(kafka_bootstrap, feedback_topic, records))

    # 4. suggestscore: the record carries the scores analyze gave its clientToken
    analyze = {
        "comment": {"text": "you utter clown"}, "requestedAttributes": {"TOXICITY": {}},
        "communityId": "forum", "clientToken": "coral:77",
    }  # fmt: skip
    result = http_post(
        f"http://127.0.0.1:{api_port}/v1alpha1/comments:analyze", orjson.dumps(analyze)
    )
    assert result.status == 200, result.body
    score = json.loads(result.body)["attributeScores"]["TOXICITY"]["summaryScore"]["value"]
    suggestion = {
        "comment": {"text": "you utter clown"}, "communityId": "forum", "clientToken": "coral:77",
        "attributeScores": {"TOXICITY": {"summaryScore": {"value": 1}}},
    }  # fmt: skip
    result = http_post(
        f"http://127.0.0.1:{api_port}/v1alpha1/comments:suggestscore", orjson.dumps(suggestion)
    )
    assert result.status == 200, result.body
    expect("forum", "toxic", score, 1)
    total = len(records) + 1

    wait_until(
        lambda: records_read(worker) >= total,
        60,
        message=lambda: f"{records_read(worker)} of {total} read:\n{worker.log()[-3000:]}",
    )
    text = body(worker)
    for (tenant, label), cells in expected.items():
        assert counts(text, tenant, label) == cells, (tenant, label)
    assert sum(sum(c.values()) for c in expected.values()) == metric_sample(
        text, "moderation_feedback_decisions_total"
    )  # nothing else counted
    # every cell of the confusion matrix was exercised somewhere
    assert {cell for c in expected.values() for cell, n in c.items() if n} == set(CELLS.values())
    outcome = "moderation_feedback_records_total"
    assert metric_sample(text, outcome, outcome="counted") == total - 3
    assert metric_sample(text, outcome, outcome="invalid") == 2
    assert metric_sample(text, outcome, outcome="no_known_label") == 1
    unscored = "moderation_feedback_unscored_total"
    assert metric_sample(text, unscored, tenant="forum", label="toxic") == 1
    assert metric_sample(text, unscored, tenant="forum", label="threat") == 1
    assert metric_sample(text, unscored) == 2
    cached_default = [s["toxic"] for i, s in scores.items() if tenant_of[i] is None]
    carried_default = [0.95, 0.01, 0.97]
    assert metric_sample(
        text, "moderation_feedback_score_sum_total", tenant="default", label="toxic"
    ) == pytest.approx(sum(cached_default) + sum(carried_default), abs=1e-4)
    target = "moderation_policy_precision_target"
    assert metric_sample(text, target, tenant="default", label="toxic") == 0.8
    assert metric_sample(text, target, tenant="other", label="toxic") == 0.8
    assert metric_sample(text, target, tenant="forum", label="toxic") == 0.9
    assert "elsewhere" not in text  # tenant label values stay bounded
    assert worker.stop() == 0, worker.log()[-3000:]


def test_the_primary_keeps_scoring_while_the_feedback_topic_holds_garbage(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory
) -> None:
    feedback_topic = f"fb-{topics.group}"
    asyncio.run(create_topics(kafka_bootstrap, {feedback_topic: 1}))
    worker = worker_process(topics, extra_env={"MODERATION_FEEDBACK_TOPIC": feedback_topic})
    wait_assigned(worker)
    garbage: list[Any] = [
        (b"k", b"\x00" * 100_000), (b"k", None), (b"k", b"[]"), (b"k", b"{}"), (b"k", b"null"),
        (b"k", b'{"id": "x", "labels": {}, "source": "s", "decided_at": 0}'),
    ] * 100  # fmt: skip
    asyncio.run(produce(kafka_bootstrap, feedback_topic, garbage))
    asyncio.run(produce(kafka_bootstrap, topics.input, [comment(f"c{i}", "hi") for i in range(50)]))
    outputs = asyncio.run(read_all(kafka_bootstrap, topics.output, 50, settle=0.5))
    assert len(outputs) == 50
    wait_until(
        lambda: records_read(worker) >= len(garbage),
        60,
        message=lambda: f"{records_read(worker)} of {len(garbage)} read:\n{worker.log()[-3000:]}",
    )
    text = body(worker)
    assert metric_sample(text, "moderation_feedback_records_total", outcome="invalid") == len(
        garbage
    )
    assert metric_sample(text, "moderation_feedback_decisions_total") == 0
    assert worker.get("/readyz").status == 200
    assert worker.log().count("skipped: not a Feedback record") <= 2  # rate-limited lines
    assert worker.stop() == 0, worker.log()[-3000:]
    # the feedback group committed what it read; the primary's group never reads that topic
    committed = asyncio.run(
        committed_offsets(kafka_bootstrap, f"{topics.group}-feedback", feedback_topic)
    )
    assert committed == {0: len(garbage)}
    assert asyncio.run(committed_offsets(kafka_bootstrap, topics.group, feedback_topic)) == {
        0: None
    }
