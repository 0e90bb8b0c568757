"""Publishing outputs and dead letters; each broker acknowledgement acknowledges an offset.

The publisher handles bytes: outputs arrive encoded (`encode_output`). A record whose output or
dead letter is too large for the producer or the topic is dead-lettered again in a smaller form
(`_too_large`, the one place that decides how): an output becomes an `output_too_large` dead
letter; a dead letter loses its key, value and headers (the `source.*` headers still say where
the original is). Any other failure after the producer's own retries is fatal: `on_fatal` is
called and the offset is never acknowledged, so it is never committed and will be redone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from schemas import (
    MODEL_POLICY_VERSION,
    ArtifactContract,
    DeadLetterHeaders,
    ErrorKind,
    ModelRef,
    ScoredComment,
)
from worker.metrics import Metrics
from worker.pipeline.checkpoint import Checkpoint
from worker.pipeline.kafka_clients import Headers
from worker.pipeline.records import InFlight
from worker.policy import Policy
from worker.quality.cache import ScoreCache
from worker.tracing import Tracing, trace_headers

log = logging.getLogger(__name__)


def encode_output(
    item: InFlight,
    probabilities: np.ndarray,
    contract: ArtifactContract,
    scored_at_ms: int,
    policy: Policy | None = None,
) -> bytes:
    """The `ScoredComment` of one comment, encoded once as JSON; `flagged` follows `policy`
    (the item's tenant's thresholds; None: the model's own, `policy_version` `model`).
    With language detection on it carries the item's `language` (judged at intake,
    worker/pipeline/consume.py); a held item (`hold`: its language is not served and its
    tenant's mode is `hold`) has its flags in `held` and `flagged` empty. A shadow's output, encoded
    here too, says the same of the language as the primary's."""
    comment = item.comment
    assert comment is not None
    scores = dict(zip(contract.labels, probabilities.tolist(), strict=True))
    flagged = (
        contract.flagged(probabilities) if policy is None else policy.flagged(item, probabilities)
    )
    output = ScoredComment(
        id=comment.id,
        scores=scores,
        flagged=[] if item.hold else flagged,
        model=ModelRef(name=contract.model_name, version=contract.model_version),
        policy_version=MODEL_POLICY_VERSION if policy is None else policy.version,
        scored_at=scored_at_ms,
        metadata=comment.metadata,
        language=item.language,
        held=flagged if item.hold else None,
    )
    return orjson.dumps(output.model_dump(exclude_none=True))


@dataclass(frozen=True, slots=True)
class _Message:
    """One record to produce, and what acknowledging it means."""

    item: InFlight
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    dead_letter: ErrorKind | None  # None: an output
    detail: str = ""
    stripped: bool = False  # a dead letter already without the original's key/value/headers


class Publisher:
    """Sends outputs and dead letters; on each acknowledgement, acknowledges the offset."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        *,
        output_topic: str,
        dlq_topic: str,
        checkpoint: Checkpoint,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None],
        tracing: Tracing | None = None,
        score_cache: ScoreCache | None = None,
    ) -> None:
        self._producer = producer
        self._score_cache = score_cache  # what each output says, remembered by comment id
        self._output_topic = output_topic
        self._dlq_topic = dlq_topic
        self._checkpoint = checkpoint
        self._metrics = metrics
        self._on_fatal = on_fatal
        self._tracing = tracing
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed = False

    async def send_output(
        self,
        item: InFlight,
        value: bytes,
        probabilities: np.ndarray | None = None,
        policy_version: str = MODEL_POLICY_VERSION,
    ) -> None:
        """Send one output (`encode_output`); with a score cache, its `probabilities` and
        `policy_version` are remembered under the comment's id (for live quality)."""
        if self._score_cache is not None and probabilities is not None and item.comment is not None:
            self._score_cache.remember(item.comment.id, probabilities, policy_version)
        headers = trace_headers(item.record.headers)  # W3C trace context, carried along
        await self._send(
            _Message(item, self._output_topic, item.record.key, value, headers, dead_letter=None)
        )

    async def send_dead_letter(self, item: InFlight, kind: ErrorKind, detail: str) -> None:
        """Dead-letter the original key, value and headers, with the reason in headers."""
        await self._send(self._dead_letter(item, kind, detail, stripped=False))

    def dead_letter_soon(self, item: InFlight, kind: ErrorKind, detail: str) -> None:
        """Schedule a dead letter without waiting (from the synchronous consume step)."""
        self._schedule(self.send_dead_letter(item, kind, detail))

    async def flush(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._producer.flush()

    def _dead_letter(
        self, item: InFlight, kind: ErrorKind, detail: str, *, stripped: bool
    ) -> _Message:
        record = item.record
        if not stripped:  # one line per record; its smaller re-send (stripped) is not logged
            log.info(
                "dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, kind
            )
        headers = DeadLetterHeaders(
            error_kind=kind,
            error_detail=detail,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
        ).to_kafka()
        if stripped:  # only the trace context is kept of the original headers
            key, value, original_headers = None, b"", trace_headers(record.headers)
        else:
            key, value, original_headers = record.key, record.value, list(record.headers or ())
        if key is None and value is None:  # a key-less tombstone: Kafka needs one of the two
            value = b""
        return _Message(
            item, self._dlq_topic, key, value, original_headers + headers, kind, detail, stripped
        )

    def _too_large(self, message: _Message) -> _Message | None:
        """The smaller dead letter to send instead of `message`; None if there is none."""
        record = message.item.record
        if message.dead_letter is None:
            key = len(record.key or b"")
            detail = (
                f"its output ({len(message.value or b'')} bytes value, {key} bytes key) is over "
                "the maximum message size of the producer or the output topic"
            )
            return self._dead_letter(
                message.item, ErrorKind.OUTPUT_TOO_LARGE, detail, stripped=False
            )
        if message.stripped:
            return None
        size = len(record.key or b"") + len(record.value or b"")
        detail = f"{message.detail}; the original record ({size} bytes) is too large to copy here"
        return self._dead_letter(message.item, message.dead_letter, detail, stripped=True)

    async def _send(self, message: _Message) -> None:
        span = None
        if self._tracing is not None:  # an output's trace headers become the publish span's
            output_headers = message.headers if message.dead_letter is None else None
            span = self._tracing.publishing(message.item, message.topic, output_headers)
        try:
            future = await self._producer.send(
                message.topic, value=message.value, key=message.key, headers=message.headers
            )
        except BaseException as exc:
            if span is not None:
                self._tracing.published(span, exc)  # type: ignore[union-attr]
            if not isinstance(exc, MessageSizeTooLargeError):
                raise
            smaller = self._too_large(message)  # over the producer's own limit: not retryable
            if smaller is None:
                raise
            await self._send(smaller)
            return
        handed = time.monotonic()
        future.add_done_callback(lambda f: self._delivered(f, message, span, handed))

    def _delivered(
        self, future: asyncio.Future[Any], message: _Message, span: Any = None, handed: float = 0.0
    ) -> None:
        exc = asyncio.CancelledError() if future.cancelled() else future.exception()
        if span is not None:
            self._tracing.published(span, exc)  # type: ignore[union-attr]
        if exc is not None:
            smaller = (
                self._too_large(message) if isinstance(exc, MessageSizeTooLargeError) else None
            )
            if smaller is not None:  # the broker refused it for its size
                self._schedule(self._send(smaller))
                return
            self._metrics.errors.labels("produce").inc()
            if not self._failed:  # one line, not one per record in flight
                log.error("publishing offset %d failed: %r", message.item.record.offset, exc)
            self._failed = True
            self._on_fatal(exc)
            return
        record = message.item.record
        self._checkpoint.ack(message.item.ticket)
        if message.dead_letter is None:
            self._metrics.scored.labels(record.topic).inc()
            self._metrics.stages["ack"].observe(max(0.0, time.monotonic() - handed))
            if record.timestamp is not None and record.timestamp > 0:
                self._metrics.end_to_end.observe(max(0.0, time.time() - record.timestamp / 1000))
        else:
            self._metrics.dead_lettered.labels(message.dead_letter.value).inc()

    def _schedule(self, send: Coroutine[Any, Any, None] | Awaitable[None]) -> None:
        task = asyncio.ensure_future(self._guard(send))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, send: Awaitable[None]) -> None:
        try:
            await send
        except Exception as exc:  # the producer could not even queue the record
            self._metrics.errors.labels("produce").inc()
            self._on_fatal(exc)
