"""Backend `auto` on a CPU: time each candidate on the batcher's shapes, keep the fastest.

At the first start on a machine (nothing remembered: `worker.backends.choice_cache`) every
candidate of `worker.backends.runtime.auto_candidates` is loaded; a candidate that fails to load
is dropped with a warning (the others still compete). Each runs the timed shapes once untimed
(first-use costs), then rounds of all shapes, the candidates interleaved within each round so
that a burst of load on a shared machine does not favour one of them; each candidate's best
round counts. Rounds stop when the next one would pass the budget (1 s of wall time in all,
first uses included). The fastest is served, the choice written to the cache with its figures,
and the others are dropped.

With one inference thread the rates are per CPU-second of the process (`time.process_time`):
on an idle machine that equals the wall-clock rate, and on a shared one it is not skewed by
whatever else runs (on 2 busy cores, wall-clock rounds of the same backend varied 2x, CPU-time
rounds 5 %). With several threads the parallel speed-up is part of what is compared: wall time.

The timed shapes are the fullest pass of each padded length (`measure_shapes`): what the
batcher forms under load, where the speed of the backend matters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from worker.backends.backend import Backend, ModelLoadError, TokenBatch
from worker.backends.choice_cache import Measured, default_cache_dir, write_choice
from worker.backends.runtime import Candidate, Runtime, measured_runtime
from worker.pipeline.batching import warm_up_shapes

log = logging.getLogger(__name__)

# 2 s put a cold start of the cpu image over 5 s (it measures at every start: /tmp is fresh);
# 1 s and 0.5 s chose the same backend in 8 of 8 trials there
BUDGET_S = 1.0


def measure_shapes(
    max_batch_size: int, token_budget: int, max_length: int
) -> list[tuple[int, int]]:
    """The largest batch of each padded length that the batcher can form."""
    largest: dict[int, int] = {}
    for batch, length in warm_up_shapes(max_batch_size, token_budget, max_length):
        largest[length] = max(batch, largest.get(length, 0))
    return sorted((batch, length) for length, batch in largest.items())


def _batch(shape: tuple[int, int]) -> TokenBatch:
    ones = np.ones(shape, dtype=np.int64)
    return TokenBatch(ones, ones, np.zeros_like(ones))


def time_backends(
    backends: dict[str, Backend],
    shapes: list[tuple[int, int]],
    budget_s: float = BUDGET_S,
    clock: Callable[[], float] = time.perf_counter,
    work_clock: Callable[[], float] | None = None,
) -> dict[str, float]:
    """Padded tokens per second of `work_clock` (default: `clock`) of each backend on `shapes`
    (best interleaved round); `clock` bounds the whole to `budget_s`."""
    work_clock = work_clock or clock
    started = clock()
    batches = [_batch(shape) for shape in shapes]
    tokens = sum(batch * length for batch, length in shapes)
    for backend in backends.values():
        backend.infer_passes(batches)  # first use of each shape, untimed
    best: dict[str, float] = {}
    last_round = 0.0
    while not best or clock() + last_round <= started + budget_s:
        round_started = clock()
        for name, backend in backends.items():
            began = work_clock()
            backend.infer_passes(batches)
            best[name] = max(best.get(name, 0.0), tokens / max(work_clock() - began, 1e-9))
        last_round = clock() - round_started
    return best


Loader = Callable[[Candidate], Backend]


@dataclass(frozen=True)
class Selection:
    backend: Backend
    runtime: Runtime
    cache_file: Path | None


def select_backend(
    runtime: Runtime,
    load: Loader,
    shapes: list[tuple[int, int]],
    *,
    cache_dir: Path | None = None,
    budget_s: float = BUDGET_S,
) -> Selection:
    """Load and time the pending runtime's candidates, keep the fastest, remember it.
    `ModelLoadError` only when no candidate loads (the first one's reason)."""
    loaded: dict[str, Backend] = {}
    chosen_by_name = {c.name: c for c in runtime.candidates}
    errors: list[str] = []
    for candidate in runtime.candidates:
        try:
            loaded[candidate.name] = load(candidate)
        except ModelLoadError as exc:
            log.warning("backend auto: %s cannot be loaded, left out: %s", candidate.name, exc)
            errors.append(str(exc))
    if not loaded:
        raise ModelLoadError(errors[0])
    per_cpu_second = runtime.threads.value == 1
    figures = time_backends(
        loaded, shapes, budget_s, work_clock=time.process_time if per_cpu_second else None
    )
    fastest = max(figures, key=lambda name: figures[name])
    candidate = chosen_by_name[fastest]
    measured = Measured(
        backend=candidate.backend,
        precision=candidate.precision.value,
        tokens_per_s={name: round(speed, 1) for name, speed in figures.items()},
        measured_at=datetime.now(UTC).isoformat(timespec="seconds"),
        basis="cpu" if per_cpu_second else "wall",
    )
    path = None
    if runtime.cache_key is not None:
        path = write_choice(cache_dir or default_cache_dir(), runtime.cache_key, measured)
    chosen = measured_runtime(runtime, measured, remembered=False)
    log.info("backend auto: %s (%s)", fastest, measured.summary())
    return Selection(loaded[fastest], chosen, path)
