"""Prometheus metrics of the worker, one per pipeline stage (names in docs/CONTRACTS.md)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from schemas import UnsupportedLanguage
from worker.pipeline.language import METRIC_LANGUAGES, OTHER, metric_label

LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
STAGE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
# a record's way through the worker, stage by stage (`moderation_stage_seconds{stage}`): fine
# below 100 ms, where the latency goals are (p50 <= 40 ms, p99 <= 100 ms at half load)
BUDGET_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06,
    0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
# in the order a Kafka record passes them; contiguous, so per record they add up to its
# `moderation_end_to_end_latency_seconds` (record timestamp -> output acknowledged)
LATENCY_STAGES = ("fetch_wait", "intake", "queue_wait", "forward", "publish", "ack")
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
SCORE_DIFF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
FLIP_DIRECTIONS = ("shadow_only", "primary_only")  # which model flags the label, the other not
SHADOW_FAILURE_STAGES = ("infer", "publish")
FRONT_DOORS = ("kafka", "http")  # the `front_door` label values of the language metrics
LANGUAGE_MODES = tuple(mode.value for mode in UnsupportedLanguage)
SUGGESTION_OUTCOMES = ("stored", "invalid", "unavailable", "unconfigured")  # suggestscore
# feedback records read by the live quality tracker (worker/quality/tracker.py), by outcome
FEEDBACK_RECORD_OUTCOMES = ("counted", "invalid", "no_known_label")


class Metrics:
    """All metrics on one registry (a fresh registry per worker keeps tests independent)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.consumed = Counter(
            "moderation_messages_consumed", "Records taken from the input topic.", ["topic"],
            registry=r,
        )  # fmt: skip
        self.scored = Counter(
            "moderation_messages_scored", "Outputs acknowledged by the broker.", ["topic"],
            registry=r,
        )  # fmt: skip
        self.dead_lettered = Counter(
            "moderation_messages_dead_lettered", "Dead letters acknowledged, by reason.",
            ["reason"], registry=r,
        )  # fmt: skip
        self.end_to_end = Histogram(
            "moderation_end_to_end_latency_seconds",
            "Kafka record timestamp to output acknowledged.", buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "moderation_queue_wait_seconds", "Consumed to its batch starting.",
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokenization = Histogram(
            "moderation_tokenization_seconds",
            "Tokenizer (and language detection) time per fetched chunk of records.",
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.inference = Histogram(
            "moderation_inference_seconds", "Forward pass and sigmoid time per batch.",
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage = Histogram(
            "moderation_stage_seconds",
            "A Kafka record's time in each stage: fetch_wait (record timestamp -> consumed), "
            "intake (-> tokenized and queued), queue_wait (-> its forward pass starts), forward "
            "(its batch's forward pass), publish (-> handed to the producer), ack (-> "
            "acknowledged by the broker).",
            ["stage"], buckets=BUDGET_BUCKETS, registry=r,
        )  # fmt: skip
        self.stages = {name: self.stage.labels(name) for name in LATENCY_STAGES}
        self.batch_size = Histogram(
            "moderation_batch_size", "Messages per inference batch.",
            buckets=BATCH_SIZE_BUCKETS, registry=r,
        )  # fmt: skip
        self.lag = Gauge(
            "moderation_consumer_lag",
            "Records not yet committed: high watermark minus the first uncommitted offset.",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.lag_seconds = Gauge(
            "moderation_consumer_lag_seconds",
            "Now minus the timestamp of the oldest record not yet committed (0 when caught up).",
            ["topic", "partition"], registry=r,
        )  # fmt: skip
        self.in_flight = Gauge(
            "moderation_in_flight_messages", "Consumed but not yet acknowledged.", registry=r
        )
        self.in_flight_bytes = Gauge(
            "moderation_in_flight_bytes",
            "Bytes (key, value, headers) of the records consumed but not yet acknowledged.",
            registry=r,
        )
        self.paused = Gauge(
            "moderation_consumer_paused", "1 while partitions are paused for backpressure.",
            registry=r,
        )  # fmt: skip
        self.commits = Counter("moderation_commits", "Successful offset commits.", registry=r)
        self.errors = Counter(
            "moderation_errors", "Internal errors by kind (produce, commit, inference).", ["kind"],
            registry=r,
        )  # fmt: skip
        self.ready = Gauge(
            "moderation_ready", "1 when the worker is ready (as /readyz).", registry=r
        )
        self.model_info = Info("moderation_model", "The model being served.", registry=r)
        self.model_collapsed = Gauge(
            "moderation_model_collapsed",
            "1 when the served model is recorded as collapsed (written anyway: export --force).",
            registry=r,
        )
        self.http_requests = Counter(
            "moderation_http_requests", "HTTP API requests answered, by method and status code.",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "moderation_http_request_duration_seconds",
            "HTTP API request received to answered, by method.", ["method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_pending = Gauge(
            "moderation_http_pending_texts",
            "Texts of HTTP API requests queued or being scored.", registry=r,
        )  # fmt: skip
        self.http_disconnects = Counter(
            "moderation_http_client_disconnects",
            "HTTP API requests whose client hung up before the answer, by method (not errors).",
            ["method"], registry=r,
        )  # fmt: skip
        self.http_connections = Gauge(
            "moderation_http_open_connections", "HTTP API connections open now.", registry=r
        )
        self.http_connections_refused = Counter(
            "moderation_http_connections_refused",
            "HTTP API connections refused (503, closed) at MODERATION_HTTP_API_MAX_CONNECTIONS.",
            registry=r,
        )  # fmt: skip
        self.feedback_suggestions = Counter(
            "moderation_feedback_suggestions",
            "comments:suggestscore requests by outcome: stored (acknowledged or written), invalid"
            " (400), unavailable (503: not stored), unconfigured (501: HTTP only, no file).",
            ["outcome"], registry=r,
        )  # fmt: skip
        # live quality from moderators' decisions (worker/quality): per bounded tenant x label
        self.feedback_records = Counter(
            "moderation_feedback_records",
            "Feedback records read for live quality, by outcome: counted, invalid (not a "
            "Feedback record: skipped), no_known_label (no label the model has).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.feedback_decisions = Counter(
            "moderation_feedback_decisions",
            "Moderators' decisions on scored comments, by tenant, label, whether the score "
            "flags it under the policy in force (flagged) and the decision (1: applies).",
            ["tenant", "label", "flagged", "decision"], registry=r,
        )  # fmt: skip
        self.feedback_unscored = Counter(
            "moderation_feedback_unscored",
            "Decisions not counted for lack of a score (neither in the record nor in this "
            "worker's id -> scores cache), by tenant and label.",
            ["tenant", "label"], registry=r,
        )  # fmt: skip
        self.feedback_score_sum = Counter(
            "moderation_feedback_score_sum",
            "Sum of the scores of the decisions counted in moderation_feedback_decisions_total, "
            "by tenant and label (mean score = this / decisions).",
            ["tenant", "label"], registry=r,
        )  # fmt: skip
        self.feedback_partitions = Gauge(
            "moderation_feedback_consumer_partitions",
            "Partitions of the feedback topic this worker counts decisions from.", registry=r,
        )  # fmt: skip
        self.policy_precision_target = Gauge(
            "moderation_policy_precision_target",
            "Precision target of each tenant's flags per label, from the policy in force.",
            ["tenant", "label"], registry=r,
        )  # fmt: skip
        self.startup = Gauge(
            "moderation_startup_seconds", "Seconds spent in each start-up phase, once ready.",
            ["phase"], registry=r,
        )  # fmt: skip

        # threshold policy (worker/policy.py)
        self.policy_info = Info(
            "moderation_policy", "The threshold policy in force (version; `model`: none).",
            registry=r,
        )  # fmt: skip
        self.policy_reloads = Counter(
            "moderation_policy_reloads", "Policy files put in force by a reload.", registry=r
        )
        self.policy_reload_failures = Counter(
            "moderation_policy_reload_failures",
            "Changed policy files rejected (the previous policy stays in force).", registry=r,
        )  # fmt: skip
        # language identification (worker/pipeline/language.py): bounded label values
        self.comments_by_language = Counter(
            "moderation_comments_by_language",
            "Comments by front door and identified language (an unsure detection counts as the "
            "model's main served language; languages outside a fixed set count as `other`).",
            ["front_door", "language"], registry=r,
        )  # fmt: skip
        self.unsupported_language = Counter(
            "moderation_unsupported_language",
            "Comments in a language the model does not serve, by front door and the mode "
            "applied (refuse, score, hold).",
            ["front_door", "mode"], registry=r,
        )  # fmt: skip
        # shadow scoring (worker/shadow.py): exported once a shadow model is attached
        self.shadow_model_info = Info(
            "moderation_shadow_model", "The shadow model scored beside the primary.", registry=r
        )
        self.shadow_scored = Counter(
            "moderation_shadow_scored", "Comments scored by the shadow and compared.", registry=r
        )
        self.shadow_dropped = Counter(
            "moderation_shadow_dropped",
            "Comments the shadow skipped because it fell behind the primary.", registry=r,
        )  # fmt: skip
        self.shadow_failures = Counter(
            "moderation_shadow_failures", "Shadow batches that failed, by stage (infer, publish).",
            ["stage"], registry=r,
        )  # fmt: skip
        self.shadow_flips = Counter(
            "moderation_shadow_flag_flips",
            "Comments whose flag for a label differs between primary and shadow, by direction.",
            ["label", "direction"], registry=r,
        )  # fmt: skip
        self.shadow_score_diff = Histogram(
            "moderation_shadow_score_difference", "|primary - shadow| score per comment and label.",
            ["label"], buckets=SCORE_DIFF_BUCKETS, registry=r,
        )  # fmt: skip

    def init_labels(self, input_topic: str) -> None:
        """Export every known label value at 0 from the start, so rates see the first event."""
        from schemas import ErrorKind

        self.consumed.labels(input_topic)
        self.scored.labels(input_topic)
        for kind in ErrorKind:
            self.dead_lettered.labels(kind.value)
        for error in ("produce", "commit", "inference", "http"):
            self.errors.labels(error)

    def init_http_labels(self) -> None:
        """The HTTP API's usual answers at 0, so that rates and ratios see the first one."""
        for code in ("200", "400", "429", "503"):
            self.http_requests.labels("analyze", code)
        self.http_latency.labels("analyze")
        self.http_disconnects.labels("analyze")
        for code in ("200", "400", "503"):
            self.http_requests.labels("suggestscore", code)
        self.http_latency.labels("suggestscore")
        for outcome in SUGGESTION_OUTCOMES:
            self.feedback_suggestions.labels(outcome)

    def init_feedback_labels(self, tenants: Iterable[str], labels: Iterable[str]) -> None:
        """Live quality is on: every record outcome, and every decision series of these
        (bounded) tenant label values, at 0."""
        for outcome in FEEDBACK_RECORD_OUTCOMES:
            self.feedback_records.labels(outcome)
        for tenant in tenants:
            for label in labels:
                self.feedback_unscored.labels(tenant, label)
                self.feedback_score_sum.labels(tenant, label)
                for flagged in ("true", "false"):
                    for decision in ("1", "0"):
                        self.feedback_decisions.labels(tenant, label, flagged, decision)

    def init_language_labels(self, served_languages: Iterable[str] = ()) -> None:
        """With language detection on: every language and mode series of both front doors at
        0 (a bounded set: `METRIC_LANGUAGES`, the served languages and `other`)."""
        languages = sorted(METRIC_LANGUAGES | {metric_label(c, tuple(served_languages)) for c in
                                               served_languages} | {OTHER})  # fmt: skip
        for front_door in FRONT_DOORS:
            for language in languages:
                self.comments_by_language.labels(front_door, language)
            for mode in LANGUAGE_MODES:
                self.unsupported_language.labels(front_door, mode)

    def count_language(
        self,
        front_door: str,
        code: str,
        served_languages: Iterable[str] = (),
        count: int = 1,
    ) -> None:
        """`count` comments in language `code` came in by `front_door` (`kafka` or `http`); the
        code is mapped to its bounded label (`metric_label`), so any code may be passed."""
        label = metric_label(code, tuple(served_languages))
        self.comments_by_language.labels(_front_door(front_door), label).inc(count)

    def count_unsupported(self, front_door: str, mode: str, count: int = 1) -> None:
        """`count` comments in a language the model does not serve got `mode` (refuse, score,
        hold)."""
        if mode not in LANGUAGE_MODES:
            raise ValueError(f"unknown unsupported-language mode {mode!r}: {LANGUAGE_MODES}")
        self.unsupported_language.labels(_front_door(front_door), mode).inc(count)

    def set_model(
        self, name: str, version: str, device: str, labels: list[str], collapsed: bool = False
    ) -> None:
        self.model_info.info(
            {"name": name, "version": version, "device": device, "labels": ",".join(labels)}
        )
        self.model_collapsed.set(1 if collapsed else 0)

    def set_shadow(self, name: str, version: str, labels: list[str]) -> None:
        """A shadow is attached: its identity, every label series at 0."""
        self.shadow_model_info.info({"name": name, "version": version})
        for label in labels:
            self.shadow_score_diff.labels(label)
            for direction in FLIP_DIRECTIONS:
                self.shadow_flips.labels(label, direction)
        for stage in SHADOW_FAILURE_STAGES:
            self.shadow_failures.labels(stage)


def _front_door(name: str) -> str:
    if name not in FRONT_DOORS:
        raise ValueError(f"unknown front door {name!r}: {FRONT_DOORS}")
    return name
