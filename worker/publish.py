"""Publishing scores and dead letters, and acknowledging offsets once the broker has them."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from schemas import DeadLetterHeaders, ErrorKind
from worker.config import Settings
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.records import InFlight

log = logging.getLogger(__name__)


def build_producer(settings: Settings) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        acks="all",
        enable_idempotence=settings.producer_idempotence,
        linger_ms=settings.producer_linger_ms,
        max_batch_size=settings.producer_max_batch_bytes,
        compression_type=None
        if settings.producer_compression == "none"
        else settings.producer_compression,
        **settings.kafka_security_kwargs(),
    )


def score_message(
    item: InFlight,
    probabilities: np.ndarray,
    labels: list[str],
    flagged: list[str],
    model_ref: dict[str, str],
    scored_at_ms: int,
) -> bytes:
    """The output value of one comment (the `ScoredComment` schema), as JSON bytes."""
    comment = item.comment
    assert comment is not None
    message: dict[str, Any] = {
        "id": comment.id,
        "scores": {label: float(p) for label, p in zip(labels, probabilities, strict=True)},
        "flagged": flagged,
        "model": model_ref,
        "scored_at": scored_at_ms,
    }
    if comment.metadata is not None:
        message["metadata"] = comment.metadata
    return orjson.dumps(message)


class Publisher:
    """Sends outputs and dead letters; on each broker acknowledgement, marks the offset done.

    A send that fails after the producer's own retries is fatal: `on_fatal` is called and the
    offset is never acknowledged, so it is never committed and will be consumed again.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        settings: Settings,
        tracker: OffsetTracker,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None],
    ) -> None:
        self.producer = producer
        self.settings = settings
        self.tracker = tracker
        self.metrics = metrics
        self.on_fatal = on_fatal
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed = False

    async def send_output(self, item: InFlight, value: bytes) -> None:
        try:
            future = await self.producer.send(
                self.settings.output_topic, value=value, key=item.record.key
            )
        except MessageSizeTooLargeError:  # e.g. a huge key, copied from the input: not retryable
            await self.send_dead_letter(item, *self._output_too_large(item, value))
            return
        future.add_done_callback(lambda f: self._acked(f, item, None, value))

    @staticmethod
    def _output_too_large(item: InFlight, value: bytes) -> tuple[ErrorKind, str]:
        key = len(item.record.key or b"")
        return ErrorKind.OUTPUT_TOO_LARGE, (
            f"its output ({len(value)} bytes value, {key} bytes key) is over the maximum "
            "message size of the producer or the output topic"
        )

    async def send_dead_letter(
        self, item: InFlight, kind: ErrorKind, detail: str, copy_record: bool = True
    ) -> None:
        """Dead-letter the original key, value and headers, with the reason in headers.

        A record too large to be published again (over the producer's `max_request_size` or the
        dead-letter topic's limit) is dead-lettered without its key and headers and with an empty
        value; the `source.*` headers still say where the original is. So is a key-less
        tombstone (Kafka needs a key or a value).
        """
        record = item.record
        if not copy_record:
            size = len(record.key or b"") + len(record.value or b"")
            detail += f"; the original record ({size} bytes) is too large to copy here"
        headers = DeadLetterHeaders(
            error_kind=kind,
            error_detail=detail,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
        ).to_kafka()
        log.info(
            "dead-lettering %s[%d]@%d: %s",
            record.topic, record.partition, record.offset, kind.value,
        )  # fmt: skip
        key, value = (record.key, record.value) if copy_record else (None, None)
        if key is None and value is None:  # a key-less tombstone: Kafka needs one of the two
            value = b""
        try:
            future = await self.producer.send(
                self.settings.dlq_topic,
                value=value,
                key=key,
                headers=(list(record.headers or ()) if copy_record else []) + headers,
            )
        except MessageSizeTooLargeError:
            if not copy_record:
                raise
            await self.send_dead_letter(item, kind, detail, copy_record=False)
            return
        retry = (kind, detail) if copy_record else None
        future.add_done_callback(lambda f: self._acked(f, item, kind, retry=retry))

    def dead_letter_soon(self, item: InFlight, kind: ErrorKind, detail: str) -> None:
        """Schedule a dead letter without waiting (used from the synchronous consume step)."""
        self._schedule(self.send_dead_letter(item, kind, detail))

    def _schedule(self, send: Any) -> None:
        task = asyncio.create_task(self._guard(send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, send: Any) -> None:
        try:
            await send
        except Exception as exc:  # the producer could not even queue the record
            self.metrics.errors.labels("produce").inc()
            self.on_fatal(exc)

    def _acked(
        self,
        future: asyncio.Future[Any],
        item: InFlight,
        kind: ErrorKind | None,
        output: bytes | None = None,
        retry: tuple[ErrorKind, str] | None = None,
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            exc = future.exception() if not future.cancelled() else asyncio.CancelledError()
            if isinstance(exc, MessageSizeTooLargeError):  # the broker refused it for its size
                if output is not None:
                    reason = self._output_too_large(item, output)
                    self._schedule(self.send_dead_letter(item, *reason))
                    return
                if retry is not None:
                    self._schedule(self.send_dead_letter(item, *retry, copy_record=False))
                    return
            self.metrics.errors.labels("produce").inc()
            if not self._failed:  # one line, not one per record in flight
                log.error("publishing offset %d failed: %r", item.record.offset, exc)
            self._failed = True
            self.on_fatal(exc)
            return
        record = item.record
        self.tracker.ack(item.offsets, record.offset)
        if kind is None:
            self.metrics.scored.labels(record.topic).inc()
            if record.timestamp is not None and record.timestamp > 0:
                self.metrics.end_to_end.observe(max(0.0, time.time() - record.timestamp / 1000))
        else:
            self.metrics.dead_lettered.labels(kind.value).inc()

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.producer.flush()
