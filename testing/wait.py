"""Waiting for a state, bounded: the one polling loop of the tests and the harnesses.

`wait_until(predicate, timeout)` calls `predicate` until it returns something truthy and returns
that; after `timeout` seconds it raises `TimeoutError(message)`. `wait_until_async` is the same on
an event loop (it sleeps with `asyncio.sleep`, so the code under test runs meanwhile). The
predicate is always called at least once, and once more at the deadline; an exception it raises
goes to the caller (to stop early, e.g. when the process waited on has died).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from typing import TypeVar

T = TypeVar("T")
Message = str | Callable[[], str]  # a callable is called only on timeout (e.g. to read a log)


def _pauses(
    predicate: Callable[[], T], timeout: float, interval: float, message: Message
) -> Generator[float, None, T]:
    """The polling itself: yields how long to sleep before the next look; returns the first
    truthy value (StopIteration.value); raises TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            text = message() if callable(message) else message
            raise TimeoutError(f"{text} (after {timeout:g} s)")
        yield min(interval, left)


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.1,
    message: Message = "the condition never held",
) -> T:
    """`predicate()`'s first truthy value, polled every `interval` seconds; TimeoutError (with
    `message`) after `timeout` seconds."""
    pauses = _pauses(predicate, timeout, interval, message)
    try:
        while True:
            time.sleep(next(pauses))
    except StopIteration as done:
        return done.value


async def wait_until_async(
    predicate: Callable[[], T],
    timeout: float,
    *,
    interval: float = 0.05,
    message: Message = "the condition never held",
) -> T:
    """`wait_until` for a coroutine: the event loop runs while it waits."""
    pauses = _pauses(predicate, timeout, interval, message)
    try:
        while True:
            await asyncio.sleep(next(pauses))
    except StopIteration as done:
        return done.value
