"""The latency budget per stage, from two scrapes of the worker's stage histograms."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest

from bench.latency_budget import budget_table, latency_budget, stage_histograms
from worker.metrics import LATENCY_STAGES, Metrics


def scrape(metrics: Metrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_budget_is_the_delta_between_two_scrapes() -> None:
    metrics = Metrics()
    for _ in range(50):  # before the latency stage: must not count
        metrics.stages["forward"].observe(2.0)
        metrics.stages["fetch_wait"].observe(2.0)
    metrics.end_to_end.observe(0.5)  # other histograms are not stages
    before = scrape(metrics)
    seconds = {"fetch_wait": 0.004, "intake": 0.0015, "queue_wait": 0.012, "forward": 0.008,
               "publish": 0.0025, "ack": 0.02}  # fmt: skip
    for _ in range(100):
        for stage, value in seconds.items():
            metrics.stages[stage].observe(value)
    after = scrape(metrics)
    generator = np.full(100, 0.5)
    measured = np.full(100, 28.5)  # 0.5 + 4 + 1.5 + 12 + 8 + 2.5 ms: ack is after the clock

    budget = latency_budget(before, after, generator, measured)

    stages = budget["stages"]
    assert list(stages) == ["generator", *LATENCY_STAGES]
    for stage, value in seconds.items():
        assert stages[stage]["count"] == 100
        assert stages[stage]["mean_ms"] == pytest.approx(1000 * value)
        # every observation is in one bucket: the quantiles lie inside it
        bounds = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.01, 0.015, 0.025)
        upper = min(b for b in bounds if b >= value)
        assert stages[stage]["p50_ms"] <= 1000 * upper
        assert stages[stage]["p99_ms"] <= 1000 * upper
    assert stages["generator"]["mean_ms"] == pytest.approx(0.5)
    assert budget["sum_of_means_ms"] == pytest.approx(28.5)
    assert budget["unaccounted_ms"] == pytest.approx(0.0, abs=1e-9)
    assert stages["queue_wait"]["share"] == pytest.approx(12 / 28.5)
    assert "share" not in stages["ack"]
    table = "\n".join(budget_table(budget))
    assert "| queue_wait | 100 | 12.00 |" in table
    assert "**28.50**" in table


def test_a_stage_without_observations_has_no_figures() -> None:
    metrics = Metrics()
    body = scrape(metrics)
    assert set(stage_histograms(body)) == set(LATENCY_STAGES)  # exported at 0 from the start
    budget = latency_budget(body, body, np.array([]), np.array([]))
    assert budget["stages"]["forward"] == {
        "count": 0, "mean_ms": None, "p50_ms": None, "p99_ms": None, "share": None,
    }  # fmt: skip
    assert budget["sum_of_means_ms"] == 0
    assert budget["unaccounted_ms"] is None
