"""The one owner of at-least-once: tracking, acknowledgements, commits, rebalances and lag.

Offsets of a partition are tracked in the order they are consumed and acknowledged in any order
(batches and dead letters finish independently). The commit point of a partition only moves
past offsets whose output or dead letter the broker has acknowledged, so a commit never skips a
record that is still in flight. Before a partition is given up in a rebalance, its in-flight
work is drained (up to a timeout) and the acknowledged prefix committed; acknowledgements that
arrive for a partition after it was given up are ignored (the next owner redoes that work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from worker.metrics import Metrics

log = logging.getLogger(__name__)

LAG_POSITION_TIMEOUT_S = 0.05


class PartitionOffsets:
    """Pending offsets of one partition during one assignment of it."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        # (offset, record timestamp in ms or None) of every tracked record not yet committed,
        # acknowledged or not: the first one is the oldest record not yet committed (lag).
        self._uncommitted: deque[tuple[int, int | None]] = deque()
        self._sizes: dict[int, int] = {}  # bytes of each record not yet acknowledged
        self.bytes = 0  # their sum: what the intake's byte bound counts
        self.next_commit: int | None = None  # first offset not yet done, once known
        self.committed: int | None = None  # last offset handed to Kafka's commit
        self.detached = False  # set when the partition is given up; late acks are ignored

    def track(self, offset: int, timestamp_ms: int | None = None, size: int = 0) -> None:
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} tracked out of order")
        if size:
            self._sizes[offset] = size
            self.bytes += size
        if not self._pending and self.next_commit is None:
            self.next_commit = offset
        self._pending.append(offset)
        self._uncommitted.append((offset, timestamp_ms))

    def ack(self, offset: int) -> None:
        self.bytes -= self._sizes.pop(offset, 0)  # its record is released now
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            done = self._pending.popleft()
            self._done.discard(done)
            self.next_commit = done + 1

    def mark_committed(self, offset: int) -> None:
        """Kafka accepted `offset` as this partition's commit point."""
        self.committed = offset
        while self._uncommitted and self._uncommitted[0][0] < offset:
            self._uncommitted.popleft()

    def oldest_uncommitted(self) -> tuple[int | None, int | None]:
        """(offset, timestamp in ms) of the oldest record not yet committed. Where every tracked
        record is committed: (the commit point, None), or (None, None) before any commit."""
        if self._uncommitted:
            return self._uncommitted[0]
        return self.committed, None

    @property
    def in_flight(self) -> int:
        return len(self._pending)


@dataclass(frozen=True, slots=True)
class Ticket:
    """What acknowledges one consumed record."""

    partition: PartitionOffsets
    offset: int


class Checkpoint:
    """Pending offsets of every assigned partition, and committing their acknowledged prefix."""

    def __init__(self, consumer: AIOKafkaConsumer, metrics: Metrics, drain_timeout_s: float):
        self._consumer = consumer
        self._metrics = metrics
        self._drain_timeout_s = drain_timeout_s
        self._partitions: dict[TopicPartition, PartitionOffsets] = {}
        self._changed = asyncio.Event()
        self._commit_lock = asyncio.Lock()

    # --- tracking ---------------------------------------------------------------------------

    def track(
        self, tp: TopicPartition, offset: int, timestamp_ms: int | None = None, size: int = 0
    ) -> Ticket:
        """Record a consumed offset (its record's timestamp, for the lag in seconds, and its
        size in bytes, for the intake's byte bound); returns the ticket to acknowledge it with."""
        state = self._partitions.get(tp)
        if state is None:
            state = self._partitions[tp] = PartitionOffsets()
        state.track(offset, timestamp_ms, size)
        return Ticket(state, offset)

    def ack(self, ticket: Ticket) -> None:
        """The output or dead letter of the ticket's record was acknowledged by the broker."""
        if ticket.partition.detached:
            return
        ticket.partition.ack(ticket.offset)
        self._changed.set()

    def in_flight(self, tps: Iterable[TopicPartition] | None = None) -> int:
        keys = self._partitions.keys() if tps is None else tps
        return sum(self._partitions[tp].in_flight for tp in keys if tp in self._partitions)

    def in_flight_bytes(self) -> int:
        """Bytes of the consumed records not yet acknowledged (key, value and headers)."""
        return sum(state.bytes for state in self._partitions.values())

    def committable(self, tps: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Each partition's commit point, where it moved since the last commit."""
        keys = list(self._partitions) if tps is None else tps
        offsets = {}
        for tp in keys:
            state = self._partitions.get(tp)
            if state and state.next_commit is not None and state.next_commit != state.committed:
                offsets[tp] = state.next_commit
        return offsets

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
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return not self.in_flight(keys)
        return True

    # --- committing -------------------------------------------------------------------------

    async def commit(self, tps: set[TopicPartition] | None = None) -> None:
        """Commit the acknowledged prefix of each assigned partition (all when `tps` is None).
        A failed commit is counted and logged; the next one carries the same offsets."""
        async with self._commit_lock:
            assigned = self._consumer.assignment()
            offsets = {tp: o for tp, o in self.committable(tps).items() if tp in assigned}
            if not offsets:
                return
            try:
                await self._consumer.commit(offsets)
            except (KafkaError, AssertionError) as exc:
                self._metrics.errors.labels("commit").inc()
                log.warning("commit of %d partitions failed: %r", len(offsets), exc)
                return
            for tp, offset in offsets.items():
                if tp in self._partitions:
                    self._partitions[tp].mark_committed(offset)
            self._metrics.commits.inc()

    async def commit_periodically(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.commit()
            await self.update_lag()

    async def update_lag(self) -> None:
        """Lag per partition, both counting the records not yet committed: those consumed and
        in flight, those acknowledged since the last commit and those not yet fetched.

        - offsets: the high watermark minus the first offset not yet committed;
        - seconds: now minus the timestamp of the oldest record not yet committed, 0 when the
          partition is caught up. Where every consumed record is committed but the partition
          has records not yet fetched, their timestamp is unknown until the next fetch (a
          moment, unless paused, and a paused worker has records in flight): the gauge keeps
          its last value.
        """
        now_ms = time.time() * 1000
        for tp in self._consumer.assignment():
            highwater = self._consumer.highwater(tp)
            if highwater is None:
                continue
            state = self._partitions.get(tp)
            first, timestamp_ms = state.oldest_uncommitted() if state else (None, None)
            if first is None:
                try:
                    async with asyncio.timeout(LAG_POSITION_TIMEOUT_S):
                        first = await self._consumer.position(tp)
                except (TimeoutError, KafkaError):
                    continue
            labels = (tp.topic, str(tp.partition))
            behind = max(0, highwater - first)
            self._metrics.lag.labels(*labels).set(behind)
            if timestamp_ms is not None and timestamp_ms >= 0:
                self._metrics.lag_seconds.labels(*labels).set(
                    max(0.0, now_ms - timestamp_ms) / 1000
                )
            elif behind == 0:
                self._metrics.lag_seconds.labels(*labels).set(0)

    # --- rebalancing ------------------------------------------------------------------------

    async def release(self, revoked: set[TopicPartition]) -> None:
        """Before partitions are given up: drain their in-flight work, commit, forget them."""
        if not revoked:
            return
        in_flight = self.in_flight(revoked)
        if in_flight:
            log.info("revoked %d partitions: draining %d messages", len(revoked), in_flight)
            if not await self.wait_drained(revoked, self._drain_timeout_s):
                log.warning("revoked partitions still had work in flight; it will be redone")
        await self.commit(revoked)
        self._forget(revoked)

    def _forget(self, tps: Iterable[TopicPartition]) -> None:
        for tp in tps:
            state = self._partitions.pop(tp, None)
            if state:
                state.detached = True
            for gauge in (self._metrics.lag, self._metrics.lag_seconds):
                with contextlib.suppress(KeyError):
                    gauge.remove(tp.topic, str(tp.partition))


class CheckpointListener(ConsumerRebalanceListener):
    """The rebalance listener, handed the checkpoint (aiokafka's local-state-consumer recipe)."""

    def __init__(
        self, checkpoint: Checkpoint, on_assigned: Callable[[set[TopicPartition]], None]
    ) -> None:
        self._checkpoint = checkpoint
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._checkpoint.release(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self._on_assigned(set(assigned))
