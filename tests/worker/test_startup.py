"""Start-up before anything connects (`worker.app.load_and_warm_up`)."""

from __future__ import annotations

import gc
import sys
from pathlib import Path

from worker.app import GIL_SWITCH_INTERVAL_S, StartupClock, load_and_warm_up
from worker.config import Settings


def test_start_up_warms_up_freezes_the_heap_and_sets_the_gil_switch_interval(
    tiny_model_dir: Path,
) -> None:
    settings = Settings(model=str(tiny_model_dir), device="cpu", max_length=32)
    clock = StartupClock()
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)  # Python's default
        model = load_and_warm_up(settings, clock)
        assert sys.getswitchinterval() == GIL_SWITCH_INTERVAL_S < 0.005
        assert gc.get_freeze_count() > 0
    finally:
        sys.setswitchinterval(before)
        gc.unfreeze()
    assert list(clock.phases) == ["imports", "model_load", "warm_up"]
    assert model.score(["hello"]).shape == (1, len(model.contract.labels))
