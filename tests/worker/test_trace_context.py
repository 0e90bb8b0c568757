"""W3C trace context through Kafka headers, and OpenTelemetry spans (`MODERATION_OTEL`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from schemas import DeadLetterHeaders
from testing.in_process import settings_for
from testing.kafka import comment, produce, read_all
from testing.topics import Topics
from testing.worker_process import REPO_ROOT, WorkerFactory
from worker.app import Worker
from worker.backends.model import load_served_model
from worker.otel import OtelTracing

pytestmark = pytest.mark.integration

DLQ_HEADER_NAMES = set(DeadLetterHeaders.model_json_schema(by_alias=True)["properties"])


def traceparent(n: int) -> bytes:
    return f"00-{n:032x}-{n + 0xABC:016x}-01".encode()


def traced(i: int, text: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    key, value = comment(f"t{i}", text)
    headers = [
        ("x-upstream", b"kept in dead letters only"),
        ("traceparent", traceparent(0x1000 + i)),
        ("tracestate", f"vendor=v{i}".encode()),
    ]
    return key, value, headers


def test_trace_headers_are_carried_to_outputs_and_dead_letters(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory
) -> None:
    """Tracing off (the default): the input's traceparent/tracestate, byte for byte, and
    nothing else on the output; the dead letter keeps every original header."""
    good = [traced(i, f"an ordinary comment {i}") for i in range(5)]
    bad = [(b"t-bad", b"{not json", traced(99, "")[2])]
    plain = [(*comment("plain", "no trace context here"), [("x-upstream", b"1")])]
    asyncio.run(produce(kafka_bootstrap, topics.input, good + bad + plain))
    worker_process(topics)
    outputs = asyncio.run(read_all(kafka_bootstrap, topics.output, 6, settle=0.5))
    dead = asyncio.run(read_all(kafka_bootstrap, topics.dlq, 1, settle=0.5))
    sent = {key: headers for key, _, headers in good + bad + plain}
    assert len(outputs) == 6
    for record in outputs:
        expected = [(n, v) for n, v in sent[record.key] if n in ("traceparent", "tracestate")]
        assert list(record.headers) == expected
    assert [r.key for r in outputs if not r.headers] == [b"plain"]
    (letter,) = dead
    original = [(n, v) for n, v in letter.headers if n not in DLQ_HEADER_NAMES]
    assert original == sent[b"t-bad"]


def test_without_otel_nothing_of_opentelemetry_is_imported() -> None:
    code = (
        "import sys\n"
        "import worker.app, worker.cli\n"
        "import worker.pipeline.consume, worker.pipeline.inference, worker.pipeline.publish\n"
        "from worker.config import load_settings\n"
        "from worker.cli import tracing_from_settings\n"
        "assert tracing_from_settings(load_settings()) is None\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('opentelemetry'))\n"
        "assert not loaded, loaded\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MODERATION_OTEL"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_otel_with_an_unknown_exporter_refuses_to_start(tmp_path: Path) -> None:
    env = os.environ | {"MODERATION_OTEL": "1", "OTEL_TRACES_EXPORTER": "no-such-exporter"}
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "model" not in result.stderr.split("\n", 1)[1]
    assert result.stderr.strip().splitlines()[-1] == (
        "moderation-worker: OTEL_TRACES_EXPORTER=no-such-exporter: no exporter "
        "'no-such-exporter' installed (the otel extra ships otlp over HTTP/protobuf and console)"
    )


def test_otel_console_exporter_from_the_environment(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory
) -> None:
    """`MODERATION_OTEL=1` with the standard variables: the real worker exports its spans."""
    asyncio.run(produce(kafka_bootstrap, topics.input, [traced(1, "hello there")]))
    worker = worker_process(
        topics,
        extra_env={
            "MODERATION_OTEL": "1",
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "moderation-test",
        },
    )
    asyncio.run(read_all(kafka_bootstrap, topics.output, 1))
    assert worker.terminate() == 0  # the provider is shut down: buffered spans are exported
    log = worker.log()
    for name in (f"consume {topics.input}", "infer batch", f"publish {topics.output}"):
        assert f'"name": "{name}"' in log, name
    assert f'"trace_id": "0x{0x1001:032x}"' in log
    assert '"service.name": "moderation-test"' in log


async def test_spans_of_consume_batch_and_publish_with_links(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    good = [traced(i, f"comment number {i}") for i in range(6)]
    bad = [(b"t-bad", b"[1, 2]", traced(50, "")[2])]
    untraced = [comment("plain", "a comment without trace context")]
    await produce(kafka_bootstrap, topics.input, good + bad + untraced)
    settings = settings_for(kafka_bootstrap, topics)
    model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    worker = Worker(settings, model, tracing=OtelTracing(provider))
    running = asyncio.create_task(worker.run())
    outputs = await read_all(kafka_bootstrap, topics.output, 7, settle=0.5)
    dead = await read_all(kafka_bootstrap, topics.dlq, 1, settle=0.5)
    worker.request_stop()
    assert await asyncio.wait_for(running, 30) == 0

    spans = exporter.get_finished_spans()
    consume = [s for s in spans if s.name == f"consume {topics.input}"]
    batches = [s for s in spans if s.name == "infer batch"]
    publish = [s for s in spans if s.name.startswith("publish ")]
    assert len(consume) == 8 and len(publish) == 8 and batches
    assert {s.kind for s in consume} == {SpanKind.CONSUMER}
    assert {s.kind for s in publish} == {SpanKind.PRODUCER}

    # consume: a child of the record's incoming context (a new trace without one)
    incoming = {
        headers[1][1].decode(): key
        for key, _, headers in good + bad  # traceparent -> key
    }
    by_key: dict[bytes, object] = {}
    for span in consume:
        assert span.parent is not None or span.context.trace_id not in {
            int(tp.split("-")[1], 16) for tp in incoming
        }
        if span.parent is None:
            by_key[b"plain"] = span
            continue
        parent = f"00-{span.parent.trace_id:032x}-{span.parent.span_id:016x}-01"
        by_key[incoming[parent]] = span
        assert span.context.trace_state.to_header().startswith("vendor=")
    assert len(by_key) == 8

    # batch: links to the consume span of every scored record, and only those
    linked = {(link.context.trace_id, link.context.span_id) for b in batches for link in b.links}
    scored = {key for key, _, _ in good} | {b"plain"}
    assert linked == {(by_key[k].context.trace_id, by_key[k].context.span_id) for k in scored}
    assert sum(b.attributes["messaging.batch.message_count"] for b in batches) == 7

    # publish: a child of the record's consume span; the output carries the publish span
    consume_ids = {s.context.span_id: s for s in consume}
    for span in publish:
        assert span.parent is not None and span.parent.span_id in consume_ids
        assert span.end_time is not None and span.status.is_ok
    publish_by_parent = {s.parent.span_id: s for s in publish}
    for record in outputs:
        span = publish_by_parent[by_key[record.key].context.span_id]
        assert span.name == f"publish {topics.output}"
        headers = dict(record.headers)
        version, trace_id, span_id, _flags = headers["traceparent"].decode().split("-")
        assert (version, trace_id, span_id) == (
            "00",
            f"{span.context.trace_id:032x}",
            f"{span.context.span_id:016x}",
        )
        if record.key != b"plain":
            sent = dict(next(h for k, _, h in good if k == record.key))
            assert headers["tracestate"] == sent["tracestate"]
            assert headers["traceparent"].split(b"-")[1] == sent["traceparent"].split(b"-")[1]
    # the dead letter: its own publish span, and the original headers untouched
    (letter,) = dead
    assert publish_by_parent[by_key[b"t-bad"].context.span_id].name == f"publish {topics.dlq}"
    assert [(n, v) for n, v in letter.headers if n not in DLQ_HEADER_NAMES] == bad[0][2]


async def test_a_dead_letter_too_large_to_copy_keeps_its_trace_context() -> None:
    """The stripped form of a dead letter (no key, empty value) keeps only the dead-letter
    headers and the trace context of the original."""
    from aiokafka import TopicPartition
    from aiokafka.errors import MessageSizeTooLargeError
    from aiokafka.structs import ConsumerRecord

    from schemas import ErrorKind
    from worker.metrics import Metrics
    from worker.pipeline.checkpoint import Checkpoint
    from worker.pipeline.publish import Publisher
    from worker.pipeline.records import InFlight

    sent: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    class Producer:  # the producer's own size limit: 100 bytes
        async def send(self, topic, value=None, key=None, headers=None):  # type: ignore[no-untyped-def]
            if len(value or b"") + len(key or b"") > 100:
                raise MessageSizeTooLargeError()
            sent.append((key, value, list(headers)))
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

        async def flush(self) -> None:
            pass

    checkpoint = Checkpoint(consumer=None, metrics=Metrics(), drain_timeout_s=1)  # type: ignore[arg-type]
    publisher = Publisher(
        Producer(),  # type: ignore[arg-type]
        output_topic="out", dlq_topic="dlq", checkpoint=checkpoint, metrics=Metrics(),
        on_fatal=pytest.fail,
    )  # fmt: skip
    key, _, headers = traced(3, "")
    record = ConsumerRecord("in", 0, 7, 0, 0, key, b"x" * 500, None, -1, -1, headers)
    item = InFlight(record=record, ticket=checkpoint.track(TopicPartition("in", 0), 7))
    await publisher.send_dead_letter(item, ErrorKind.INVALID_JSON, "value is not valid JSON")
    await publisher.flush()
    await asyncio.sleep(0)  # the acknowledgement's callback
    [(key, value, written)] = sent
    assert key is None and value == b""
    assert [(n, v) for n, v in written if n not in DLQ_HEADER_NAMES] == headers[1:]
    assert checkpoint.in_flight() == 0
