"""The checkpoint: commit points, acknowledgements, commits and revocation."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from worker.checkpoint import Checkpoint
from worker.metrics import Metrics

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
