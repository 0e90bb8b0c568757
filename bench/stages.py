"""The bench's stages, each timed with the machine's noise over it (`testing.machine_noise`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from testing.machine_noise import NOISY_STEAL_PCT, NoiseMeter, describe

log = logging.getLogger(__name__)


class StageLog:
    """Every stage in the order it ran: its name, wall seconds, steal, load and other
    processes' CPU share (`NoiseMeter.figures`)."""

    def __init__(self) -> None:
        self.stages: list[dict[str, Any]] = []

    @contextmanager
    def stage(self, name: str) -> Iterator[NoiseMeter]:
        """Measure the machine around one stage; the stage is recorded even if it fails."""
        meter = NoiseMeter()
        try:
            with meter:
                yield meter
        finally:
            self.stages.append({"stage": name, **meter.figures})
            log.info(
                "stage %s: %.1f s, %s", name, meter.figures["seconds"], describe(meter.figures)
            )

    def summary(self) -> dict[str, Any]:
        """For bench.json: the threshold, every stage and the noisy ones."""
        return {
            "noisy_steal_pct": NOISY_STEAL_PCT,
            "stages": self.stages,
            "noisy_stages": [s["stage"] for s in self.stages if s.get("noisy")],
            "total_seconds": round(sum(s["seconds"] for s in self.stages), 1),
        }
