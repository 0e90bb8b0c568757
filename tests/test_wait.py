"""`testing.wait`: the bounded wait every test and harness polls with."""

from __future__ import annotations

import asyncio
import time

import pytest

from testing.wait import wait_until, wait_until_async


def test_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "ready", "later"])
    assert wait_until(lambda: next(answers), 5, interval=0.001) == "ready"


def test_times_out_with_its_message_after_a_last_look() -> None:
    calls: list[float] = []
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"^never after \d+ calls \(after 0.2 s\)$"):
        wait_until(lambda: calls.append(time.monotonic()), 0.2, interval=0.15,
                   message=lambda: f"never after {len(calls)} calls")  # fmt: skip
    assert len(calls) >= 2 and calls[-1] - started >= 0.2  # at once, ..., and at the deadline


def test_an_exception_of_the_predicate_ends_the_wait() -> None:
    def dead() -> bool:
        raise RuntimeError("the process exited")

    with pytest.raises(RuntimeError, match="exited"):
        wait_until(dead, 60)


async def test_the_async_twin_lets_the_event_loop_run() -> None:
    event = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, event.set)
    assert await wait_until_async(event.is_set, 5, interval=0.01)
    with pytest.raises(TimeoutError, match="not yet"):
        await wait_until_async(lambda: False, 0.05, message="not yet")
