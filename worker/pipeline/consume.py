"""The intake: fetch, track, decode, tokenize once, queue; pause when too much is in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from schemas import ErrorKind
from worker.metrics import Metrics
from worker.pipeline.batching import BatchQueue, Tokenized
from worker.pipeline.checkpoint import Checkpoint
from worker.pipeline.decode import InvalidMessage, decode_comment
from worker.pipeline.publish import Publisher
from worker.pipeline.records import InFlight
from worker.pipeline.tokenizer import TextTokenizer
from worker.tracing import Tracing

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 100


@dataclass(frozen=True, slots=True)
class IntakeLimits:
    max_in_flight: int  # pause fetching at this many unacknowledged records, resume at half
    max_poll_records: int
    max_text_bytes: int
    max_in_flight_bytes: int = 67_108_864  # the same, in bytes of those records
    max_metadata_bytes: int = 65_536


def record_size(record: ConsumerRecord) -> int:
    """Bytes a consumed record holds: key, value, header names and values."""
    size = len(record.key or b"") + len(record.value or b"")
    for name, value in record.headers or ():
        size += len(name) + len(value or b"")
    return size


class ConsumeLoop:
    """Takes records from Kafka into the batch queue: fetching pauses at `max_in_flight`
    records or `max_in_flight_bytes` bytes not yet acknowledged, and resumes once both are down
    to half (one fetch may pass the byte bound: the sizes are known only once fetched).

    Tokenization runs on `tokenize_executor` (one thread), one call per fetched chunk, while the
    backend infers on its own thread: batch n+1 is tokenized during batch n by construction.
    """

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        checkpoint: Checkpoint,
        tokenizer: TextTokenizer,
        tokenize_executor: Executor,
        queue: BatchQueue,
        publisher: Publisher,
        metrics: Metrics,
        limits: IntakeLimits,
        tracing: Tracing | None = None,
    ) -> None:
        self._consumer = consumer
        self._checkpoint = checkpoint
        self._tokenizer = tokenizer
        self._tokenize_executor = tokenize_executor
        self._queue = queue
        self._publisher = publisher
        self._metrics = metrics
        self._limits = limits
        self._tracing = tracing
        self._paused = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            room = self._apply_backpressure()
            fetched = await self._consumer.getmany(
                timeout_ms=FETCH_TIMEOUT_MS,
                max_records=max(1, min(room, self._limits.max_poll_records)),
            )
            items = [
                item
                for tp, records in fetched.items()
                for record in records
                if (item := self._admit(tp, record)) is not None
            ]
            if items:
                self._queue.put(await self._tokenize(items))

    def _apply_backpressure(self) -> int:
        """Pause all partitions at either limit, resume at half of both; returns the room left
        (in records)."""
        limit, byte_limit = self._limits.max_in_flight, self._limits.max_in_flight_bytes
        in_flight = self._checkpoint.in_flight()
        in_flight_bytes = self._checkpoint.in_flight_bytes()
        if not self._paused and (in_flight >= limit or in_flight_bytes >= byte_limit):
            self._paused = True
            log.debug("pausing: %d messages, %d bytes in flight", in_flight, in_flight_bytes)
        elif self._paused and in_flight <= limit // 2 and in_flight_bytes <= byte_limit // 2:
            self._paused = False
            self._consumer.resume(*self._consumer.assignment())
        if self._paused:  # also covers partitions assigned since the pause began
            self._consumer.pause(*self._consumer.assignment())
        self._metrics.paused.set(1 if self._paused else 0)
        self._metrics.in_flight.set(in_flight)
        self._metrics.in_flight_bytes.set(in_flight_bytes)
        return 0 if in_flight_bytes >= byte_limit else max(0, limit - in_flight)

    def _admit(self, tp: TopicPartition, record: ConsumerRecord) -> InFlight | None:
        """Track and decode one record (synchronously: tracked before a rebalance can
        interleave); a record that cannot be scored is dead-lettered and None returned."""
        self._metrics.consumed.labels(tp.topic).inc()
        ticket = self._checkpoint.track(tp, record.offset, record.timestamp, record_size(record))
        item = InFlight(record=record, ticket=ticket)
        if self._tracing is not None:
            with self._tracing.consume(item):
                return self._decode(item)
        return self._decode(item)

    def _decode(self, item: InFlight) -> InFlight | None:
        try:
            item.comment = decode_comment(
                item.record.value, self._limits.max_text_bytes, self._limits.max_metadata_bytes
            )
        except InvalidMessage as bad:
            self._publisher.dead_letter_soon(item, bad.kind, bad.detail)
            return None
        return item

    async def _tokenize(self, items: list[InFlight]) -> list[Tokenized]:
        """Token ids of every item, on the tokenizer thread. If the chunk fails, each text is
        tried alone and the ones the tokenizer refuses are dead-lettered."""
        loop = asyncio.get_running_loop()
        texts = [item.comment.text for item in items if item.comment is not None]
        started = time.perf_counter()
        try:
            ids = await loop.run_in_executor(self._tokenize_executor, self._tokenizer.encode, texts)
        except Exception:
            log.exception("tokenizing %d texts failed; retrying one by one", len(texts))
            return [entry for item in items if (entry := await self._tokenize_one(item))]
        self._metrics.tokenization.observe(time.perf_counter() - started)
        return [Tokenized(item, seq) for item, seq in zip(items, ids, strict=True)]

    async def _tokenize_one(self, item: InFlight) -> Tokenized | None:
        assert item.comment is not None
        loop = asyncio.get_running_loop()
        try:
            [ids] = await loop.run_in_executor(
                self._tokenize_executor, self._tokenizer.encode, [item.comment.text]
            )
        except Exception as exc:
            self._metrics.errors.labels("inference").inc()
            await self._publisher.send_dead_letter(
                item, ErrorKind.INFERENCE_FAILED, f"the tokenizer failed on this text: {exc!r}"
            )
            return None
        return Tokenized(item, ids)
