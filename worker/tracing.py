"""Trace context through Kafka headers, and the hooks of optional OpenTelemetry tracing.

Always: the W3C trace context headers of an input record (`traceparent`, `tracestate`) are
carried to its output; its dead letter keeps every original header anyway. That is the whole
cost when tracing is off: no OpenTelemetry import, no span, one filter over the headers.

With `MODERATION_OTEL=1` (the `otel` extra installed), `worker.cli.tracing_from_settings` returns a
`Tracing` (`worker/otel.py`): a consume span per record (child of the record's incoming
context), a batch span per inference batch (linked to each record's consume span) and a
publish span per output or dead letter (child of the consume span). An output's trace headers
then carry the publish span's context; a dead letter's original headers stay untouched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from worker.pipeline.kafka_clients import Headers
    from worker.pipeline.records import InFlight

TRACE_HEADERS = ("traceparent", "tracestate")


def trace_headers(headers: Iterable[tuple[str, bytes]] | None) -> Headers:
    """The W3C trace context headers among `headers`, in their order."""
    return [(name, value) for name, value in headers or () if name in TRACE_HEADERS]


class TracingError(ValueError):
    """Tracing was asked for but cannot be set up; the message is one line."""


class Tracing(Protocol):
    """What the pipeline calls when tracing is on (`worker.otel.OtelTracing`)."""

    def consume(self, item: InFlight) -> AbstractContextManager[None]:
        """Around the admission of one record; leaves the span's context in `item.trace`."""
        ...

    def batch(self, items: Sequence[Any]) -> AbstractContextManager[None]:
        """Around the inference of one batch, linked to each item's `trace`."""
        ...

    def publishing(self, item: InFlight, topic: str, headers: Headers | None) -> Any:
        """Start the publish span of one record; with `headers` (an output's), replace the
        trace headers in it by the span's context. Returns the span for `published`."""
        ...

    def published(self, span: Any, error: BaseException | None) -> None:
        """The broker acknowledged the record (or `error`): end the span."""
        ...

    def shutdown(self) -> None:
        """Export what is left."""
        ...
