"""OpenTelemetry tracing of the pipeline (imported only with `MODERATION_OTEL=1`).

Spans (messaging semantic conventions where they apply):
- `consume <input topic>` (CONSUMER), one per record, child of the context in its `traceparent`
  / `tracestate` headers (a new trace without them); covers tracking and decoding;
- `infer batch` (INTERNAL), one per inference batch, with a link to each record's consume span
  (a batch has many parents); at most `OTEL_SPAN_LINK_COUNT_LIMIT` links (SDK default 128);
- `publish <topic>` (PRODUCER), one per output or dead letter, child of the record's consume
  span, from the send to the broker's acknowledgement. An output's `traceparent` is this span.

The exporter comes from the standard variables: `OTEL_TRACES_EXPORTER` (`otlp`, the default,
over HTTP/protobuf; `console`; `none`; or any installed exporter's entry point name), then
`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME` (default `moderation-worker`),
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from worker.pipeline.kafka_clients import Headers
from worker.pipeline.records import InFlight
from worker.tracing import TRACE_HEADERS, TracingError

SERVICE_NAME = "moderation-worker"
_PROPAGATOR = TraceContextTextMapPropagator()


class _KafkaHeaders(Getter[Sequence[tuple[str, bytes]]], Setter[Headers]):
    """Kafka headers, (name, bytes) pairs, as a carrier of the W3C propagator."""

    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [value.decode("latin-1") for name, value in carrier if name == key and value]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [name for name, _ in carrier]

    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.append((key, value.encode("latin-1")))


_HEADERS = _KafkaHeaders()


def _exporters() -> list[Any]:
    """Span exporters named by OTEL_TRACES_EXPORTER (comma-separated)."""
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
    )
    exporters = []
    for name in filter(None, names):
        if name == "none":
            continue
        entry = name
        if name == "otlp":
            entry = "otlp_proto_grpc" if protocol == "grpc" else "otlp_proto_http"
        found = list(entry_points(group="opentelemetry_traces_exporter", name=entry))
        if not found:
            raise TracingError(
                f"OTEL_TRACES_EXPORTER={name}: no exporter {entry!r} installed "
                "(the otel extra ships otlp over HTTP/protobuf and console)"
            )
        exporters.append(found[0].load()())
    return exporters


class OtelTracing:
    """The `worker.tracing.Tracing` hooks, on an OpenTelemetry `TracerProvider`."""

    def __init__(self, provider: TracerProvider) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("moderation-worker")

    @classmethod
    def from_environment(cls) -> OtelTracing:
        service = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        for exporter in _exporters():
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider)

    @contextmanager
    def consume(self, item: InFlight) -> Iterator[None]:
        record = item.record
        parent = _PROPAGATOR.extract(record.headers or (), getter=_HEADERS)
        span = self._tracer.start_span(
            f"consume {record.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "receive",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
            },
        )
        item.trace = span.get_span_context()
        with trace.use_span(span, end_on_exit=True):  # records an exception, sets ERROR
            yield

    @contextmanager
    def batch(self, items: Sequence[Any]) -> Iterator[None]:
        contexts = [ctx for item in items if (ctx := getattr(item, "trace", None)) is not None]
        span = self._tracer.start_span(
            "infer batch",
            kind=SpanKind.INTERNAL,
            links=[Link(ctx) for ctx in contexts],
            attributes={"messaging.batch.message_count": len(items)},
        )
        with trace.use_span(span, end_on_exit=True):  # records an exception, sets ERROR
            yield

    def publishing(self, item: InFlight, topic: str, headers: Headers | None) -> Any:
        parent = item.trace
        context = trace.set_span_in_context(trace.NonRecordingSpan(parent)) if parent else None
        span = self._tracer.start_span(
            f"publish {topic}",
            context=context,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
            },
        )
        if headers is not None:
            headers[:] = [(name, value) for name, value in headers if name not in TRACE_HEADERS]
            _PROPAGATOR.inject(headers, context=trace.set_span_in_context(span), setter=_HEADERS)
        return span

    def published(self, span: Any, error: BaseException | None) -> None:
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def shutdown(self) -> None:
        self._provider.shutdown()
