"""Watching `worker.pipeline.batching.BatchQueue` from a test without sleeping."""

from __future__ import annotations

from testing.wait import wait_until_async
from worker.pipeline.batching import BatchQueue


async def reader_has_looked(queue: BatchQueue, timeout: float = 10) -> None:
    """Until the queue's reader has seen the last `put`: a `put` sets the queue's change event
    and a reader clears it when it goes back to waiting (`BatchQueue._wait_for_change`). By
    then whatever the reader did with what it saw (maybe nothing) is done."""
    await wait_until_async(
        lambda: not queue._changed.is_set(), timeout, message="the queue's reader never looked"
    )
