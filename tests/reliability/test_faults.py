"""Fault injection at CI size, the worker as a separate process on a real broker.

The full-size runs (100,000 messages, 10+ crashes, a 60 s broker freeze, a minute of 10x
overload) are `make reliability` (scripts/reliability.py); these reduced runs keep the same
assertions. SIGTERM under load and a second worker joining/leaving run at CI size in
tests/worker/test_lifecycle.py and are not repeated here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testing.broker import tansu_available
from testing.reliability import scenarios

pytestmark = pytest.mark.integration

ENV = {
    "MODERATION_MAX_IN_FLIGHT": "256",
    "MODERATION_MAX_BATCH_SIZE": "32",
    "MODERATION_SHUTDOWN_GRACE_S": "20",
}


def report(figures: dict) -> None:
    print(json.dumps(figures, indent=1))


def test_kill9_at_random_moments_loses_nothing(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    figures = scenarios.kill9(
        kafka_bootstrap, tmp_path, messages=3000, kills=3, model=str(tiny_model_dir), env=ENV,
        seed=1,
    )  # fmt: skip
    report(figures)
    assert figures["crashes"] == 3 and figures["lost"] == 0


@pytest.mark.skipif(not tansu_available(), reason="needs the tansu binary to freeze a broker")
def test_broker_frozen_then_resumed_loses_nothing(tiny_model_dir: Path, tmp_path: Path) -> None:
    figures = scenarios.broker_freeze(
        tmp_path, messages=4000, freeze_s=12, model=str(tiny_model_dir),
        env=ENV | {"MODERATION_MAX_BATCH_SIZE": "4"},
    )  # fmt: skip
    report(figures)
    assert figures["lost"] == 0


def test_overload_keeps_memory_bounded_and_lag_drains(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    figures = scenarios.overload(
        kafka_bootstrap, tmp_path, factor=10, duration_s=3, model=str(tiny_model_dir),
        env=ENV | {"MODERATION_MAX_BATCH_SIZE": "2", "MODERATION_MAX_IN_FLIGHT": "512"},
        rss_headroom_mib=200, calibration_messages=1000,
    )  # fmt: skip
    report(figures)
    # the scenario itself fails below 10x; stated here too: a CI machine that cannot offer 10x
    # the rate it measured fails this test rather than passing a weaker overload
    assert figures["offered_factor"] >= 10, figures
    assert figures["lost"] == 0
