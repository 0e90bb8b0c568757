"""The one queue between tokenization and the backend, and where batches are cut.

Latency first: a batch forms when the backend asks for one (`next_batch`), from whatever is
queued, up to `max_batch_size` records; nothing closes a small batch on a timer while the
backend is still busy. At low load a record waits for at most the batch in progress; under load
batches grow by themselves. Only a full batch is taken while the backend is busy
(`next_full_batch`): it cannot grow by waiting, and the backend starts it the moment it is
free. (`max_wait_s > 0` makes the backend wait for a fuller batch; off by default.) Inside a
batch, records are sorted by length and cut into forward passes of at most
`token_budget` padded tokens (`forward_passes`): the only place where lengths are looked at.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from worker.backends.backend import SHAPE_MULTIPLE, padded_length
from worker.pipeline.records import Work


@dataclass(slots=True)
class Tokenized:
    """A decoded record (or an HTTP request's text) with its token ids, waiting for the backend."""

    item: Work
    ids: list[int]
    enqueued_at: float = field(default_factory=time.monotonic)


class BatchQueue:
    """FIFO of tokenized records. Its size is bounded by the caller (max in flight)."""

    def __init__(self, max_batch_size: int, max_wait_s: float = 0.0) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._entries: deque[Tokenized] = deque()
        self._changed = asyncio.Event()
        self._closed = False

    def put(self, entries: list[Tokenized]) -> None:
        if self._closed:
            raise RuntimeError("the batch queue is closed")
        if entries:
            self._entries.extend(entries)
            self._changed.set()

    def close(self) -> None:
        """No more records: `next_batch` returns what is left, then an empty batch."""
        self._closed = True
        self._changed.set()

    def __len__(self) -> int:
        return len(self._entries)

    async def next_batch(self) -> list[Tokenized]:
        """The oldest records, up to `max_batch_size`; empty once closed and drained."""
        while not self._entries:
            if self._closed:
                return []
            await self._wait_for_change(None)
        if self.max_wait_s > 0:
            deadline = self._entries[0].enqueued_at + self.max_wait_s
            while len(self._entries) < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not await self._wait_for_change(remaining):
                    break
        return self._take()

    async def next_full_batch(self) -> list[Tokenized]:
        """Once `max_batch_size` records are queued, the oldest of them; empty if the queue is
        closed first. A full batch cannot grow by waiting, so the backend may take it while it
        is still busy with the one before (`worker/pipeline/inference.py`)."""
        while len(self._entries) < self.max_batch_size:
            if self._closed:
                return []
            await self._wait_for_change(None)
        return self._take()

    def _take(self) -> list[Tokenized]:
        count = min(len(self._entries), self.max_batch_size)
        return [self._entries.popleft() for _ in range(count)]

    async def _wait_for_change(self, timeout: float | None) -> bool:
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True


# A pass is cut where the next (longer) record would add more than this many padded tokens to
# the records already in it: a pass costs about its padded tokens plus a fixed part worth ~15
# of them (ONNX Runtime int8, BERT-Tiny), so a short record is not padded to a long one's length
# merely because the budget has room. In-process, thread CPU per batch on real comments, ONNX
# Runtime int8 (torch bf16) on an AMD EPYC: batches of 8 -32 % (-23 %), of 16 -42 % (-32 %), of
# 256 -5 % (-7 %); at half load batches hold ~5-30 records.
PASS_WASTE_TOKENS = 64


def forward_passes(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into forward passes of similar length: sorted by length, cut so that a
    pass padded to its longest member holds at most `token_budget` tokens (at least one record
    each), and where the next record would pad the ones before it by more than
    `PASS_WASTE_TOKENS` in all. `token_budget <= 0`: one pass in the original order."""
    if not lengths:
        return []
    if token_budget <= 0 or len(lengths) == 1:
        return [list(range(len(lengths)))]
    passes: list[list[int]] = []
    current: list[int] = []
    width = 0  # the padded length of `current`
    for index in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        padded = padded_length(lengths[index])
        if current and (
            (len(current) + 1) * padded > token_budget
            or len(current) * (padded - width) > PASS_WASTE_TOKENS
        ):
            passes.append(current)
            current = []
        current.append(index)
        width = padded
    passes.append(current)
    return passes


def warm_up_shapes(
    max_batch_size: int, token_budget: int, max_length: int
) -> Iterator[tuple[int, int]]:
    """Every (batch size, padded length) shape `forward_passes` can produce, so that warm-up
    pays each kernel's first use before the worker reports ready. Without a budget the shapes
    are unbounded: one record of each length."""
    for length in range(SHAPE_MULTIPLE, padded_length(max_length) + 1, SHAPE_MULTIPLE):
        largest = min(max_batch_size, token_budget // length) if token_budget > 0 else 1
        for batch in range(1, max(1, largest) + 1):
            yield (batch, length)
