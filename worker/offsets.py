"""Which offsets may be committed: the at-least-once bookkeeping.

Offsets of a partition are tracked in the order they are consumed and acknowledged in any order
(batches and dead letters finish independently). The commit point of a partition only moves past
offsets whose output or dead letter the broker has acknowledged, so a commit never skips a
message that is still in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable

from aiokafka import TopicPartition


class PartitionOffsets:
    """Pending offsets of one partition during one assignment of it."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.next_commit: int | None = None  # first offset not yet done, once known
        self.committed: int | None = None  # last offset handed to Kafka's commit
        self.detached = False  # set when the partition is revoked; late acks are ignored

    def track(self, offset: int) -> None:
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} tracked out of order")
        if not self._pending and self.next_commit is None:
            self.next_commit = offset
        self._pending.append(offset)

    def ack(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            done = self._pending.popleft()
            self._done.discard(done)
            self.next_commit = done + 1

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def first_pending(self) -> int | None:
        return self._pending[0] if self._pending else None


class OffsetTracker:
    """Pending offsets of every assigned partition, and the offsets that are safe to commit."""

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._changed = asyncio.Event()

    def track(self, tp: TopicPartition, offset: int) -> PartitionOffsets:
        """Record a consumed offset; returns the handle to acknowledge it with."""
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = PartitionOffsets()
        state.track(offset)
        return state

    def ack(self, state: PartitionOffsets, offset: int) -> None:
        """The output or dead letter of `offset` was acknowledged by the broker."""
        if state.detached:
            return
        state.ack(offset)
        self._changed.set()

    def in_flight(self, tps: Iterable[TopicPartition] | None = None) -> int:
        keys = self._partitions.keys() if tps is None else tps
        return sum(self._partitions[tp].in_flight for tp in keys if tp in self._partitions)

    def next_offset(self, tp: TopicPartition) -> int | None:
        """First offset of `tp` not yet done (what a commit would store), if known."""
        state = self._partitions.get(tp)
        return state.next_commit if state else None

    def committable(self, tps: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets to commit: each partition's commit point, where it moved since last commit."""
        keys = list(self._partitions) if tps is None else tps
        offsets = {}
        for tp in keys:
            state = self._partitions.get(tp)
            if state and state.next_commit is not None and state.next_commit != state.committed:
                offsets[tp] = state.next_commit
        return offsets

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if tp in self._partitions:
                self._partitions[tp].committed = offset

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop revoked partitions; acknowledgements still on their way are ignored."""
        for tp in tps:
            state = self._partitions.pop(tp, None)
            if state:
                state.detached = True

    async def wait_drained(self, tps: Iterable[TopicPartition] | None, timeout: float) -> bool:
        """Wait until nothing of `tps` (all when None) is in flight; False on timeout."""
        keys = None if tps is None else list(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.in_flight(keys):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return not self.in_flight(keys)
        return True
