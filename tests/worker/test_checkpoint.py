"""The checkpoint: commit points, acknowledgements, commits and revocation."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from worker.metrics import Metrics
from worker.pipeline.checkpoint import Checkpoint

TP = TopicPartition("t", 0)
OTHER = TopicPartition("t", 1)


class FakeConsumer:
    """What the checkpoint asks of aiokafka's consumer: assignment and commit."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self.assigned = assigned
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))


def checkpoint(consumer: FakeConsumer, drain_timeout_s: float = 1.0) -> Checkpoint:
    return Checkpoint(consumer, Metrics(), drain_timeout_s)  # type: ignore[arg-type]


def test_commit_point_never_passes_an_unacknowledged_offset() -> None:
    state = checkpoint(FakeConsumer({TP}))
    tickets = {offset: state.track(TP, offset) for offset in (10, 11, 12, 13)}
    assert state.committable() == {TP: 10}  # nothing done: the first offset itself
    state.ack(tickets[12])
    state.ack(tickets[11])
    assert state.committable() == {TP: 10}  # 10 still in flight
    state.ack(tickets[10])
    assert state.committable() == {TP: 13}
    assert state.in_flight() == 1


def test_out_of_order_tracking_is_refused() -> None:
    state = checkpoint(FakeConsumer({TP}))
    state.track(TP, 5)
    with pytest.raises(ValueError):
        state.track(TP, 5)


async def test_commit_sends_only_moved_points_of_assigned_partitions() -> None:
    consumer = FakeConsumer({TP})
    state = checkpoint(consumer)
    state.ack(state.track(TP, 0))
    state.ack(state.track(OTHER, 7))  # not assigned (any more): never committed
    await state.commit()
    await state.commit()  # nothing moved since
    assert consumer.commits == [{TP: 1}]


async def test_revoke_drains_commits_and_ignores_late_acks() -> None:
    consumer = FakeConsumer({TP, OTHER})
    state = checkpoint(consumer, drain_timeout_s=0.5)
    in_flight = state.track(TP, 0)
    asyncio.get_running_loop().call_later(0.05, state.ack, in_flight)
    await state.release({TP})  # waits for offset 0, then commits 1
    assert consumer.commits == [{TP: 1}]
    late = state.track(OTHER, 3)
    consumer.assigned = {TP}
    await state.release({OTHER})  # nothing acknowledges it: gives up after the drain timeout
    state.ack(late)  # acknowledged after the partition was given up: ignored
    assert state.in_flight() == 0 and state.committable() == {}


async def test_wait_drained_times_out_while_work_is_in_flight() -> None:
    state = checkpoint(FakeConsumer({TP}))
    ticket = state.track(TP, 0)
    assert not await state.wait_drained({TP}, timeout=0.05)
    state.ack(ticket)
    assert await state.wait_drained(None, timeout=0.05)


class LagConsumer(FakeConsumer):
    """Also the high watermark and position the lag is computed from."""

    def __init__(self, assigned: set[TopicPartition], highwater: int, position: int = 0) -> None:
        super().__init__(assigned)
        self.highwater_ = highwater
        self.position_ = position

    def highwater(self, tp: TopicPartition) -> int:
        return self.highwater_

    async def position(self, tp: TopicPartition) -> int:
        return self.position_


def lag_of(state: Checkpoint) -> tuple[float, float]:
    metrics = state._metrics
    return (
        metrics.lag.labels(TP.topic, "0")._value.get(),
        metrics.lag_seconds.labels(TP.topic, "0")._value.get(),
    )


async def test_lag_counts_records_not_yet_committed_in_offsets_and_seconds() -> None:
    consumer = LagConsumer({TP}, highwater=10, position=4)
    state = checkpoint(consumer)  # type: ignore[arg-type]
    await state.update_lag()  # nothing fetched yet: from the position; seconds not known
    assert lag_of(state) == (6, 0)
    now_ms = time.time() * 1000
    tickets = [state.track(TP, 4 + i, int(now_ms - 60_000 + i * 10_000)) for i in range(3)]
    state.ack(tickets[0])  # acknowledged but not committed: still lag
    await state.update_lag()
    behind, seconds = lag_of(state)
    assert behind == 6 and 59 < seconds < 65
    await state.commit()  # commits offset 5: the oldest uncommitted is now offset 5 (-50 s)
    await state.update_lag()
    behind, seconds = lag_of(state)
    assert behind == 5 and 49 < seconds < 55
    for ticket in tickets[1:]:
        state.ack(ticket)
    await state.commit()  # everything consumed committed; offsets 7..9 not fetched yet
    await state.update_lag()
    behind, seconds = lag_of(state)
    assert behind == 3 and 49 < seconds < 55  # unknown until fetched: the last value stays
    consumer.highwater_ = 7
    await state.update_lag()
    assert lag_of(state) == (0, 0)  # caught up


async def test_revoked_partitions_stop_exporting_lag() -> None:
    consumer = LagConsumer({TP}, highwater=1)
    state = checkpoint(consumer)  # type: ignore[arg-type]
    state.ack(state.track(TP, 0, int(time.time() * 1000)))
    await state.update_lag()
    await state.release({TP})
    metrics = state._metrics
    assert not [
        sample
        for metric in (*metrics.lag.collect(), *metrics.lag_seconds.collect())
        for sample in metric.samples
    ]


class AnswersAsCancelled(LagConsumer):
    """Its position answer completes in the very step the commit loop is cancelled: the race
    that made `asyncio.wait_for` (Python 3.11) lose the cancellation, so that a worker's
    shutdown waited forever for its commit loop (CPython gh-86296)."""

    loop_task: asyncio.Task[None] | None = None
    broken = False

    def highwater(self, tp: TopicPartition) -> int:
        if self.broken:  # ends a loop that lost its cancellation, so that the test can fail
            raise LostCancellation
        return self.highwater_

    async def position(self, tp: TopicPartition) -> int:
        assert self.loop_task is not None
        self.loop_task.cancel()
        return self.position_


class LostCancellation(BaseException):
    pass


async def test_the_commit_loop_ends_when_cancelled_as_a_lag_lookup_completes() -> None:
    consumer = AnswersAsCancelled({TP}, highwater=5)  # nothing tracked: lag from the position
    state = checkpoint(consumer)  # type: ignore[arg-type]
    task = asyncio.create_task(state.commit_periodically(0.001))
    consumer.loop_task = task
    done, _ = await asyncio.wait({task}, timeout=2.0)
    if task not in done:
        consumer.broken = True
        await asyncio.wait({task}, timeout=2.0)
    assert task in done and task.cancelled()


def test_bytes_in_flight_are_released_as_each_record_is_acknowledged() -> None:
    """The intake's byte bound counts a record until its own ack, even while an earlier offset
    holds the commit point (and so the count) back; a partition given up stops counting."""
    checkpoint = Checkpoint(consumer=None, metrics=Metrics(), drain_timeout_s=1)  # type: ignore[arg-type]
    a, b = TopicPartition("t", 0), TopicPartition("t", 1)
    tickets = [checkpoint.track(a, offset, None, size) for offset, size in ((0, 100), (1, 50))]
    checkpoint.track(b, 7, None, 1000)
    assert checkpoint.in_flight_bytes() == 1150
    checkpoint.ack(tickets[1])  # out of order: offset 0 still pending
    assert checkpoint.in_flight() == 3 and checkpoint.in_flight_bytes() == 1100
    checkpoint.ack(tickets[0])
    assert checkpoint.in_flight() == 1 and checkpoint.in_flight_bytes() == 1000
    checkpoint._forget([b])
    assert checkpoint.in_flight_bytes() == 0
