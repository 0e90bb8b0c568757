"""The start/stop contract of the worker's optional parts, and the bounds of its shutdown.

The primary pipeline (consume, infer, publish, commit) is wired and drained by `worker.app`.
Everything optional beside it (the policy watcher, the shadow scorer, the Perspective HTTP API,
the feedback consumer of live quality) is a `Feature`: `Worker` starts each after the primary,
calls `close()` on each when the drain begins (after the consume loop stopped, before the batch
queue closes), and `stop()` on each, in the order they were started, after the primary drained
and its Kafka clients stopped. A feature's failure is logged and never stops the primary: its
tasks are `side_task`s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ShutdownTimeouts:
    """How long each step of a shutdown may wait (tests pass small values)."""

    shadow_drain_s: float = 2.0  # after the primary: for the shadow's queue, then its flush
    task_cancel_s: float = 5.0  # for the cancelled loops (and side tasks) to end
    kafka_client_stop_s: float = 10.0  # each: final commit, leave group, flush


class Feature(Protocol):
    """An optional part of the worker with a lifecycle of its own (see the module)."""

    name: str

    async def start(self) -> None:
        """Begin, after the primary started. Raising stops the worker (exit 1); a feature that
        can go on without something it needs logs that and starts without it."""
        ...

    def close(self) -> None:
        """The drain began: take no new work from outside (what is queued is still finished).
        Default: nothing to refuse."""

    async def stop(self) -> None:
        """After the primary drained: finish within the feature's own bound, release what it
        holds. Called whether or not `start` succeeded; should not raise."""
        ...


def side_task(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """A task the primary never waits on: if it dies, that is logged and the primary goes on."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_log_death)
    return task


def _log_death(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s task ended: %r (the primary goes on)", task.get_name(), task.exception())


async def cancel_and_wait(task: asyncio.Task[None] | None, timeout_s: float) -> None:
    """Cancel `task` and wait up to `timeout_s` for it to end (a lost cancellation is logged)."""
    if task is None:
        return
    task.cancel()
    _, pending = await asyncio.wait({task}, timeout=timeout_s)
    if pending:
        log.error("task %s did not end when cancelled: going on without it", task.get_name())
