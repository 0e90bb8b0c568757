"""The batch queue (latency-first: a batch forms when the backend asks) and forward passes."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from testing.queues import reader_has_looked
from worker.pipeline.batching import (
    PASS_WASTE_TOKENS,
    BatchQueue,
    Tokenized,
    forward_passes,
    padded_length,
    warm_up_shapes,
)


def entries(n: int, start: int = 0) -> list[Tokenized]:
    return [Tokenized(item=i, ids=[0] * (i + 1)) for i in range(start, start + n)]  # type: ignore[arg-type]


def items(batch: list[Tokenized]) -> list[int]:
    return [entry.item for entry in batch]  # type: ignore[misc]


async def test_a_full_batch_is_handed_out_only_once_full_or_nothing_once_closed() -> None:
    queue = BatchQueue(max_batch_size=3)
    queue.put(entries(2))
    waiting = asyncio.ensure_future(queue.next_full_batch())
    await reader_has_looked(queue)
    assert not waiting.done()  # two of three: not full, so not taken
    queue.put(entries(2, start=2))
    assert items(await asyncio.wait_for(waiting, 2)) == [0, 1, 2]
    waiting = asyncio.ensure_future(queue.next_full_batch())
    queue.close()
    assert await asyncio.wait_for(waiting, 2) == []  # closed before full: the rest stays
    assert items(await queue.next_batch()) == [3]


async def test_a_batch_takes_what_is_queued_up_to_the_maximum_without_waiting() -> None:
    queue = BatchQueue(max_batch_size=4)
    queue.put(entries(6))
    started = time.monotonic()
    assert items(await queue.next_batch()) == [0, 1, 2, 3]
    assert items(await queue.next_batch()) == [4, 5]  # no deadline: a partial batch goes now
    assert time.monotonic() - started < 0.5


async def test_the_backend_waits_for_the_first_record_only() -> None:
    queue = BatchQueue(max_batch_size=64)
    asyncio.get_running_loop().call_later(0.05, queue.put, entries(1))
    started = time.monotonic()
    batch = await asyncio.wait_for(queue.next_batch(), 2)
    assert items(batch) == [0]
    assert time.monotonic() - started < 1.0


async def test_records_queued_while_the_backend_was_busy_form_one_batch() -> None:
    queue = BatchQueue(max_batch_size=64)
    queue.put(entries(1))
    first = await queue.next_batch()
    for i in range(1, 10):  # arrive while `first` is being inferred
        queue.put(entries(1, start=i))
    assert items(first) == [0]
    assert items(await queue.next_batch()) == list(range(1, 10))


async def test_max_wait_holds_a_partial_batch_for_more_records() -> None:
    queue = BatchQueue(max_batch_size=100, max_wait_s=0.3)
    queue.put(entries(1))
    asyncio.get_running_loop().call_later(0.05, queue.put, entries(1, start=1))
    started = time.monotonic()
    assert items(await queue.next_batch()) == [0, 1]
    assert 0.2 <= time.monotonic() - started < 2.0


async def test_max_wait_counts_from_enqueueing() -> None:
    queue = BatchQueue(max_batch_size=100, max_wait_s=0.2)
    # queued 0.25 s ago (e.g. the previous batch was being inferred meanwhile)
    queue.put([Tokenized(item=0, ids=[0], enqueued_at=time.monotonic() - 0.25)])  # type: ignore[arg-type]
    started = time.monotonic()
    assert items(await queue.next_batch()) == [0]
    assert time.monotonic() - started < 0.1


async def test_closed_queue_returns_the_rest_then_empty() -> None:
    queue = BatchQueue(max_batch_size=2)
    queue.put(entries(3))
    queue.close()
    assert items(await queue.next_batch()) == [0, 1]
    assert items(await queue.next_batch()) == [2]
    assert await queue.next_batch() == []
    with pytest.raises(RuntimeError):
        queue.put(entries(1))


async def test_closing_wakes_a_waiting_backend() -> None:
    queue = BatchQueue(max_batch_size=2)
    asyncio.get_running_loop().call_later(0.05, queue.close)
    assert await asyncio.wait_for(queue.next_batch(), 2) == []


def test_queue_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BatchQueue(max_batch_size=0)
    with pytest.raises(ValueError):
        BatchQueue(max_batch_size=1, max_wait_s=-1)


@given(
    lengths=st.lists(st.integers(min_value=1, max_value=128), min_size=1, max_size=80),
    budget=st.integers(min_value=32, max_value=4096),
)
def test_forward_passes_cover_every_record_once_within_the_budget(
    lengths: list[int], budget: int
) -> None:
    passes = forward_passes(lengths, budget)
    assert sorted(i for p in passes for i in p) == list(range(len(lengths)))
    for p in passes:
        padded = len(p) * padded_length(max(lengths[i] for i in p))
        assert padded <= budget or len(p) == 1


def test_forward_passes_group_short_apart_from_long() -> None:
    lengths = [120, 5, 118, 6, 7, 121]
    passes = forward_passes(lengths, token_budget=3 * 128)
    assert [sorted(p) for p in passes] == [[1, 3, 4], [0, 2, 5]]
    assert forward_passes(lengths, token_budget=0) == [list(range(6))]
    assert forward_passes([], token_budget=100) == []


def test_a_short_record_is_not_padded_to_a_long_ones_length_for_room_in_the_budget() -> None:
    # all four fit one pass of 4 x 128 = 512 <= 2048 tokens, but padding the two short ones to
    # 128 would add 2 x 96 padded tokens (> PASS_WASTE_TOKENS): they make a pass of their own
    lengths = [100, 10, 110, 20]
    assert [sorted(p) for p in forward_passes(lengths, token_budget=2048)] == [[1, 3], [0, 2]]
    # one record one step longer (1 x 32 padded tokens more) still shares the pass
    assert forward_passes([10, 40], token_budget=2048) == [[0, 1]]
    # three one step shorter than the next: 3 x 32 padded tokens more is over the bound
    assert PASS_WASTE_TOKENS < 3 * 32
    assert [sorted(p) for p in forward_passes([30, 31, 32, 33], token_budget=2048)] == [
        [0, 1, 2],
        [3],
    ]


def test_warm_up_covers_every_shape_forward_passes_can_make() -> None:
    shapes = set(warm_up_shapes(max_batch_size=16, token_budget=512, max_length=100))
    for lengths in ([1] * 16, [100] * 16, [33, 64, 65, 97, 2, 3]):
        for p in forward_passes(lengths, 512):
            shape = (min(len(p), 16), padded_length(max(lengths[i] for i in p)))
            assert shape in shapes
    assert max(length for _, length in shapes) == 128
