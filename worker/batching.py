"""Micro-batching by size AND deadline.

A batch closes when it holds `max_batch_size` items or when its oldest item has waited
`max_wait` seconds since it was enqueued, whichever comes first. Items that already waited
while the previous batch was being scored go out at once: the deadline counts from enqueueing,
not from when the batcher looked.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    max_wait_s: float

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")

    def deadline(self, oldest_enqueued_at: float) -> float:
        return oldest_enqueued_at + self.max_wait_s


@dataclass
class _Entry(Generic[T]):
    item: T
    enqueued_at: float = field(default_factory=time.monotonic)


class MicroBatcher(Generic[T]):
    """An unbounded FIFO drained in batches (the caller bounds what it puts in)."""

    def __init__(self, policy: BatchPolicy) -> None:
        self.policy = policy
        self._queue: asyncio.Queue[_Entry[T] | None] = asyncio.Queue()
        self._closed = False

    def put(self, item: T) -> None:
        if self._closed:
            raise RuntimeError("batcher is closed")
        self._queue.put_nowait(_Entry(item))

    def close(self) -> None:
        """No more items; `next_batch` returns what is left, then an empty list."""
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(None)

    def __len__(self) -> int:
        return self._queue.qsize() - (1 if self._closed else 0)

    async def next_batch(self) -> list[tuple[T, float]]:
        """The next batch as (item, enqueued_at) pairs; empty once closed and drained."""
        first = await self._queue.get()
        if first is None:
            self._queue.put_nowait(None)  # keep the end marker for later calls
            return []
        batch = [first]
        deadline = self.policy.deadline(first.enqueued_at)
        while len(batch) < self.policy.max_batch_size:
            try:
                entry = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    entry = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if entry is None:
                self._queue.put_nowait(None)
                break
            batch.append(entry)
        return [(e.item, e.enqueued_at) for e in batch]
