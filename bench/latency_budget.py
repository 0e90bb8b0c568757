"""The latency budget at half load: where a comment's time goes, stage by stage.

The worker times each Kafka record through contiguous stages (`moderation_stage_seconds{stage}`,
worker/metrics.py): fetch_wait (its record timestamp -> the consume loop has it), intake (->
tokenized and queued), queue_wait (-> its batch's forward pass starts), forward (that pass),
publish (-> handed to the producer), ack (-> acknowledged by the broker). The bench scrapes
/metrics before and after the latency stage and takes the difference of each stage's
histogram; it adds the one stage the worker cannot see, the load generator's own (the bench's
send -> the input record's timestamp, from both topics' records).

The bench's end-to-end figure stops at the output record's timestamp, which the producer sets
when the worker hands it the record: so it is the sum of `generator` through `publish`;
`ack` comes after it (it is in the worker's own end-to-end histogram).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from testing.http import metric_values

STAGE_METRIC = "moderation_stage_seconds"
# in the order a comment passes them; those the bench's end-to-end clock covers, then `ack`
MEASURED_STAGES = ("generator", "fetch_wait", "intake", "queue_wait", "forward", "publish")
AFTER_CLOCK_STAGES = ("ack",)


def histogram_quantile(values: dict[str, float], name: str, q: float) -> float | None:
    """Prometheus-style quantile (linear within the bucket) of a scraped histogram."""
    buckets = sorted(
        (float(key.split("{le=", 1)[1].rstrip("}")), count)
        for key, count in values.items()
        if key.startswith(name + "_bucket{le=")
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return lower_bound
            share = (target - lower_count) / max(count - lower_count, 1e-12)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return None


def stage_histograms(body: str) -> dict[str, dict[str, float]]:
    """Each stage's series of `moderation_stage_seconds` in a Prometheus text exposition, as
    `metric_values` reads one histogram: {stage: {"moderation_stage_seconds_bucket{le=0.001}":
    count, ..._sum, ..._count}}."""
    lines: dict[str, list[str]] = {}
    for line in body.splitlines():
        if not line.startswith(STAGE_METRIC) or 'stage="' not in line:
            continue
        stage = line.split('stage="', 1)[1].split('"', 1)[0]
        lines.setdefault(stage, []).append(line)
    return {stage: metric_values("\n".join(group)) for stage, group in lines.items()}


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """`after - before`, key by key (a key missing before counts 0)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def stage_row(values: dict[str, float]) -> dict[str, Any]:
    """Count, mean, p50, p99 (ms) of one stage's histogram (a delta of two scrapes)."""
    count = values.get(STAGE_METRIC + "_count", 0.0)
    total = values.get(STAGE_METRIC + "_sum", 0.0)

    def ms(q: float) -> float | None:
        value = histogram_quantile(values, STAGE_METRIC, q)
        return None if value is None else 1000 * value

    return {
        "count": int(count),
        "mean_ms": 1000 * total / count if count else None,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
    }


def sample_row(samples_ms: np.ndarray) -> dict[str, Any]:
    """The same row from exact samples (ms)."""
    if samples_ms.size == 0:
        return {"count": 0, "mean_ms": None, "p50_ms": None, "p99_ms": None}
    return {
        "count": int(samples_ms.size),
        "mean_ms": float(samples_ms.mean()),
        "p50_ms": float(np.percentile(samples_ms, 50)),
        "p99_ms": float(np.percentile(samples_ms, 99)),
    }


def latency_budget(
    before: str, after: str, generator_ms: np.ndarray, measured_ms: np.ndarray
) -> dict[str, Any]:
    """The budget from two /metrics bodies scraped around the latency stage, the load
    generator's own delay per comment and the measured end-to-end latency (both ms):
    a row per stage, the sum of the stage means the bench's clock covers beside the measured
    mean, and the share of that sum each stage takes."""
    start, end = stage_histograms(before), stage_histograms(after)
    stages: dict[str, dict[str, Any]] = {"generator": sample_row(generator_ms)}
    for stage in MEASURED_STAGES[1:] + AFTER_CLOCK_STAGES:
        stages[stage] = stage_row(delta(start.get(stage, {}), end.get(stage, {})))
    means = [stages[s]["mean_ms"] for s in MEASURED_STAGES]
    total = sum(m for m in means if m is not None)
    for stage in MEASURED_STAGES:
        mean = stages[stage]["mean_ms"]
        stages[stage]["share"] = mean / total if mean is not None and total > 0 else None
    measured = sample_row(measured_ms)
    return {
        "stages": stages,
        "sum_of_means_ms": total,
        "measured": measured,
        "unaccounted_ms": None if measured["mean_ms"] is None else measured["mean_ms"] - total,
    }


def budget_table(budget: dict[str, Any]) -> list[str]:
    """The budget as REPORT.md's markdown table."""

    def f(value: float | None, digits: int = 1) -> str:
        return "n/a" if value is None else f"{value:,.{digits}f}"

    rows = [
        "| stage | comments | mean ms | p50 ms | p99 ms | share of the sum |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for stage, row in budget["stages"].items():
        share = row.get("share")
        rows.append(
            f"| {stage} | {row['count']:,} | {f(row['mean_ms'], 2)} | {f(row['p50_ms'])} | "
            f"{f(row['p99_ms'])} | {'after the clock' if share is None else f'{share:.0%}'} |"
        )
    measured = budget["measured"]
    total = f(budget["sum_of_means_ms"], 2)
    rows.append(f"| **sum of means** (generator … publish) | | **{total}** | | | |")
    rows.append(
        f"| **measured end to end** (bench send → output timestamp) | {measured['count']:,} | "
        f"**{f(measured['mean_ms'], 2)}** | {f(measured['p50_ms'])} | {f(measured['p99_ms'])} | |"
    )
    return rows
