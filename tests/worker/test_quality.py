"""Live quality without a broker: the id -> scores cache, bounded tenant label values, the
tracker's counts per tenant x label (from carried scores, the cache, or none), a bad record
skipped by the consumer's parse step, and an HTTP-only worker counting what suggestscore stores.
On the real broker: tests/worker/test_quality_kafka.py."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas import Feedback, ModelRef, ThresholdPolicy
from schemas.artifact import read_contract
from testing.http import http_post, metric_sample
from testing.models import DEFAULT_MODEL_DIR
from testing.ports import free_port
from testing.topics import Topics
from testing.worker_process import QUICK_ENV, WorkerProcess, worker_env
from worker.metrics import Metrics
from worker.policy import PolicyHolder
from worker.quality.cache import ScoreCache
from worker.quality.consumer import parse
from worker.quality.tenants import MAX_NAMED_TENANTS, TenantLabels
from worker.quality.tracker import QualityTracker

CONTRACT = read_contract(DEFAULT_MODEL_DIR)
LABELS = CONTRACT.labels
MODEL = ModelRef(name=CONTRACT.model_name, version=CONTRACT.model_version)
POLICY = ThresholdPolicy(
    version="p1",
    thresholds={"toxic": 0.5, "insult": 0.5},
    precision_targets={"toxic": 0.9},
    tenants={"forum": {"thresholds": {"toxic": 0.8}, "precision_targets": {"toxic": 0.95}}},
)


def row(**scores: float) -> np.ndarray:
    return np.array([scores.get(label, 0.0) for label in LABELS], np.float32)


def feedback(id_: str, tenant: str | None = None, scores: dict[str, float] | None = None,
             **labels: int) -> Feedback:  # fmt: skip
    return Feedback(
        id=id_, labels=labels, tenant=tenant, source="test", decided_at=0, scores=scores
    )


def value(metrics: Metrics, name: str, **labels: str) -> float:
    got = metrics.registry.get_sample_value(name, labels)
    return 0.0 if got is None else got


def decisions(metrics: Metrics, tenant: str, label: str) -> dict[str, float]:
    """TP, FP, FN, TN of one tenant x label."""
    cells = {"tp": ("true", "1"), "fp": ("true", "0"), "fn": ("false", "1"), "tn": ("false", "0")}
    return {
        name: value(metrics, "moderation_feedback_decisions_total", tenant=tenant, label=label,
                    flagged=flagged, decision=decision)
        for name, (flagged, decision) in cells.items()
    }  # fmt: skip


def tracker(cache: ScoreCache | None = None) -> tuple[QualityTracker, Metrics, PolicyHolder]:
    metrics = Metrics()
    holder = PolicyHolder(CONTRACT, POLICY, metrics=metrics)
    return QualityTracker(holder, metrics, cache), metrics, holder


def test_cache_keeps_the_most_recent_ids_and_what_was_published() -> None:
    cache = ScoreCache(3, LABELS, MODEL)
    for i in range(4):
        cache.remember(f"c{i}", row(toxic=0.1 * i), "p1")
    cache.get("c1")  # a read does not make an entry younger: the order is the scoring order
    cache.remember("c2", row(toxic=0.9), "p2")  # scored again: youngest, its last scores
    assert len(cache) == 3 and cache.get("c0") is None
    cache.remember("c4", row(), "p2")
    assert cache.get("c1") is None and cache.get("c3") is not None
    published = cache.get("c2")
    assert published is not None and published.policy_version == "p2"
    assert published.model == MODEL
    assert published.score_of("toxic") == pytest.approx(0.9)
    assert published.score_dict() == pytest.approx(dict.fromkeys(LABELS, 0.0) | {"toxic": 0.9})
    assert published.score_of("no-such-label") is None
    with pytest.raises(ValueError):
        ScoreCache(0, LABELS, MODEL)


def test_cache_memory_per_entry() -> None:
    """The figure the settings doc quotes (about 300 bytes per entry)."""
    cache = ScoreCache(20_000, LABELS, MODEL)
    rows = np.random.default_rng(0).random((20_000, len(LABELS)), dtype=np.float32)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        cache.remember(f"comment-{i:012d}", rows[i], "2026-12-01")
    per_entry = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    tracemalloc.stop()
    assert 100 < per_entry < 350, per_entry


def test_tenant_label_values_are_bounded_by_the_policy() -> None:
    many = ThresholdPolicy(version="v", tenants={f"t{i:03d}": {} for i in range(80)})
    tenants = TenantLabels(many)
    assert len(tenants.values()) == MAX_NAMED_TENANTS + 2
    assert tenants.label_of(None) == "default"
    assert tenants.label_of("t000") == "t000"
    assert tenants.label_of("t079") == "other"  # beyond the cap
    assert tenants.label_of("anyone-else") == "other"
    assert TenantLabels(None).values() == ("default", "other")


def test_tracker_counts_tp_fp_fn_tn_under_each_tenants_thresholds() -> None:
    track, metrics, _ = tracker()
    # default thresholds (toxic 0.5): 0.6 flags, 0.4 does not
    track.count(feedback("a", scores={"toxic": 0.6}, toxic=1))  # TP
    track.count(feedback("b", scores={"toxic": 0.6}, toxic=0))  # FP
    track.count(feedback("c", scores={"toxic": 0.4}, toxic=1))  # FN
    track.count(feedback("d", scores={"toxic": 0.4}, toxic=0))  # TN
    # forum's toxic threshold is 0.8: 0.6 does not flag there
    track.count(feedback("e", tenant="forum", scores={"toxic": 0.6}, toxic=1))  # FN
    track.count(feedback("f", tenant="forum", scores={"toxic": 0.85}, toxic=1))  # TP
    # a tenant the policy does not name: `other`, with the default thresholds
    track.count(feedback("g", tenant="unknown-co", scores={"toxic": 0.6}, toxic=0))  # FP
    assert decisions(metrics, "default", "toxic") == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert decisions(metrics, "forum", "toxic") == {"tp": 1, "fp": 0, "fn": 1, "tn": 0}
    assert decisions(metrics, "other", "toxic") == {"tp": 0, "fp": 1, "fn": 0, "tn": 0}
    assert value(
        metrics, "moderation_feedback_score_sum_total", tenant="default", label="toxic"
    ) == pytest.approx(0.6 + 0.6 + 0.4 + 0.4)
    assert value(metrics, "moderation_feedback_records_total", outcome="counted") == 7
    # no series for a tenant the records named but the policy does not
    assert (
        metrics.registry.get_sample_value(
            "moderation_feedback_decisions_total",
            {"tenant": "unknown-co", "label": "toxic", "flagged": "true", "decision": "0"},
        )
        is None
    )


def test_partial_labels_scores_from_the_cache_and_unscored() -> None:
    cache = ScoreCache(10, LABELS, MODEL)
    cache.remember("cached", row(toxic=0.7, insult=0.2), "p1")
    track, metrics, _ = tracker(cache)
    # judged on insult only: toxic is not counted at all
    track.count(feedback("cached", insult=1))  # from the cache: 0.2 < 0.5, FN
    # the record's own score wins over the cache's
    track.count(feedback("cached", scores={"toxic": 0.1}, toxic=1))  # FN, not TP
    # neither: unscored, not a decision
    track.count(feedback("never-scored", toxic=1, threat=0))
    # a record carrying a score for one label, the cache none: that label only
    track.count(feedback("never-scored", scores={"threat": 0.9}, toxic=0, threat=0))
    # labels the model does not have
    assert track.count(feedback("x", no_such_label=1)) == "no_known_label"
    assert decisions(metrics, "default", "insult") == {"tp": 0, "fp": 0, "fn": 1, "tn": 0}
    assert decisions(metrics, "default", "toxic") == {"tp": 0, "fp": 0, "fn": 1, "tn": 0}
    assert decisions(metrics, "default", "threat") == {"tp": 0, "fp": 1, "fn": 0, "tn": 0}
    unscored = "moderation_feedback_unscored_total"
    assert value(metrics, unscored, tenant="default", label="toxic") == 2
    assert value(metrics, unscored, tenant="default", label="threat") == 1
    assert value(metrics, "moderation_feedback_records_total", outcome="no_known_label") == 1


def test_precision_targets_follow_the_policy_in_force() -> None:
    _, metrics, holder = tracker()
    target = "moderation_policy_precision_target"
    assert value(metrics, target, tenant="default", label="toxic") == 0.9
    assert value(metrics, target, tenant="other", label="toxic") == 0.9
    assert value(metrics, target, tenant="forum", label="toxic") == 0.95
    reloaded = ThresholdPolicy(
        version="p2", precision_targets={"insult": 0.7}, tenants={"kids": {}}
    )
    holder.swap(reloaded)
    assert (
        metrics.registry.get_sample_value(target, {"tenant": "default", "label": "toxic"}) is None
    )
    assert metrics.registry.get_sample_value(target, {"tenant": "forum", "label": "toxic"}) is None
    assert value(metrics, target, tenant="kids", label="insult") == 0.7
    # the new tenant's decision series are exported at 0 from the reload on
    assert (
        metrics.registry.get_sample_value(
            "moderation_feedback_decisions_total",
            {"tenant": "kids", "label": "toxic", "flagged": "false", "decision": "1"},
        )
        == 0.0
    )


def test_a_bad_record_is_skipped_and_the_rest_parsed() -> None:
    good = feedback("ok", scores={"toxic": 0.9}, toxic=1).model_dump_json().encode()
    parsed = parse(
        [("t[0]@0", b"\xff not json"), ("t[0]@1", good), ("t[0]@2", None),
         ("t[0]@3", b'{"id": "x", "labels": {"toxic": 2}, "source": "s", "decided_at": 0}')]
    )  # fmt: skip
    assert [(where, f is not None) for where, f in parsed] == [
        ("t[0]@0", False), ("t[0]@1", True), ("t[0]@2", False), ("t[0]@3", False),
    ]  # fmt: skip


# ------------------------------------------------------------------ HTTP only: no consumer


def test_http_only_counts_the_decisions_suggestscore_stores_with_the_scores_analyze_gave(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """No Kafka: suggestscore's record carries the scores analyze published for its
    `clientToken` (or its text's hash), and the worker counts it in-process."""
    records = tmp_path / "feedback.jsonl"
    policy = tmp_path / "policy.json"
    policy.write_bytes(orjson.dumps({"version": "h1", "tenants": {"forum": {}}}))
    api = free_port()
    environment = worker_env(
        "127.0.0.1:9", Topics.fresh("quality-http-only"), free_port(),
        QUICK_ENV | {
            "MODERATION_MODEL": str(tiny_model_dir), "MODERATION_HTTP_API_PORT": str(api),
            "MODERATION_FEEDBACK_FILE": str(records), "MODERATION_POLICY_FILE": str(policy),
        },
    )  # fmt: skip
    worker = WorkerProcess(environment, tmp_path / "worker.log", args=["--http-only"])
    url = f"http://127.0.0.1:{api}/v1alpha1/comments"
    try:
        worker.wait_ready(90)
        scored = {}
        for text, token in (("you fool", "tok-1"), ("kind words", None), ("coral", None)):
            analyze = {"comment": {"text": text}, "requestedAttributes": {"TOXICITY": {}},
                       "communityId": "forum"}  # fmt: skip
            if token:
                analyze["clientToken"] = token
            answer = http_post(f"{url}:analyze", orjson.dumps(analyze))
            assert answer.status == 200, answer.body
            scored[text] = orjson.loads(answer.body)["attributeScores"]["TOXICITY"]["summaryScore"][
                "value"
            ]
        for text, token, decision in (
            ("you fool", "tok-1", 1), ("kind words", None, 0), ("never analyzed", None, 1),
            ("coral", "comment:42", 0),  # Coral: analyze sent no token, the decision names it
        ):  # fmt: skip
            suggestion = {
                "comment": {"text": text},
                "communityId": "forum",
                "attributeScores": {"TOXICITY": {"summaryScore": {"value": decision}}},
            }
            if token:
                suggestion["clientToken"] = token
            assert http_post(f"{url}:suggestscore", orjson.dumps(suggestion)).status == 200
        written = [Feedback.model_validate_json(line) for line in records.read_bytes().splitlines()]
        assert [r.scores is not None for r in written] == [True, True, False, True]
        for record, text in zip(written, ("you fool", "kind words", "", "coral"), strict=True):
            if not text:
                continue
            assert record.scores is not None and set(record.scores) == set(LABELS)
            assert record.scores["toxic"] == pytest.approx(scored[text], abs=1e-6)
            assert record.policy_version == "h1" and record.model is not None
        text = worker.get("/metrics").body
        threshold = dict(read_contract(tiny_model_dir).label_thresholds)["toxic"]
        expected = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
        expected["tp" if scored["you fool"] >= threshold else "fn"] += 1
        expected["fp" if scored["kind words"] >= threshold else "tn"] += 1
        expected["fp" if scored["coral"] >= threshold else "tn"] += 1
        assert {
            cell: metric_sample(text, "moderation_feedback_decisions_total", tenant="forum",
                                label="toxic", flagged=flagged, decision=decision)
            for cell, (flagged, decision) in
            {"tp": ("true", "1"), "fp": ("true", "0"), "fn": ("false", "1"),
             "tn": ("false", "0")}.items()
        } == expected  # fmt: skip
        unscored = "moderation_feedback_unscored_total"
        assert metric_sample(text, unscored, tenant="forum", label="toxic") == 1
        assert metric_sample(text, "moderation_feedback_records_total", outcome="counted") == 4
        assert "moderation_feedback_consumer_partitions 0.0" in text  # no consumer
    finally:
        assert worker.terminate() == 0, worker.log()[-3000:]
