"""Hostile input: the catalog through the real worker on the real broker, and the parser fuzzed.

Every valid record is scored, every invalid one is dead-lettered with its reason, the worker
never crashes. The catalog and the reasons behind its less obvious verdicts: `catalog.py`.
"""

from __future__ import annotations

import asyncio
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import ErrorKind
from testing.kafka import consume_until
from testing.reliability.catalog import MAX_TEXT_BYTES, SCORED, Case, catalog
from testing.topics import Topics
from testing.worker_process import WorkerFactory
from worker.pipeline.decode import InvalidMessage, decode_comment

BIG = 16 * 1_048_576


async def create_topics_for_big_records(bootstrap: str, topics: Topics) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        big = {"max.message.bytes": str(BIG)}
        await admin.create_topics(
            [
                NewTopic(topics.input, 1, 1, topic_configs=big),  # one partition: offset = index
                NewTopic(topics.output, 1, 1),
                NewTopic(topics.dlq, 1, 1),
            ]
        )
    finally:
        await admin.close()


async def produce_cases(bootstrap: str, topic: str, cases: list[Case]) -> dict[int, Case]:
    """Produce one by one; returns offset -> case for those the broker took (some brokers
    refuse the records over their message size limit: those cases are left out)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=BIG, max_batch_size=BIG
    )
    await producer.start()
    taken: dict[int, Case] = {}
    try:
        for case in cases:
            try:
                meta = await (await producer.send(topic, value=case.value, key=case.record_key))
            except KafkaError as exc:
                print(f"broker refused case {case.name} ({case.size} bytes): {exc!r}")
                continue
            taken[meta.offset] = case
    finally:
        await producer.stop()
    return taken


async def read_fates(
    bootstrap: str, topics: Topics, expected: int, timeout: float
) -> tuple[dict[str, list[dict]], dict[int, list[tuple[dict, object]]]]:
    """Outputs by id and dead letters by source offset, until `expected` records (+1 s)."""
    consumer = AIOKafkaConsumer(
        topics.output, topics.dlq, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=BIG, fetch_max_bytes=BIG,
    )  # fmt: skip
    await consumer.start()
    outputs: dict[str, list[dict]] = {}
    dead: dict[int, list[tuple[dict, object]]] = {}
    count = 0

    def take(topic: str, record: ConsumerRecord) -> None:
        nonlocal count
        count += 1
        if topic == topics.output:
            body = orjson.loads(record.value)
            outputs.setdefault(body["id"], []).append(body)
        else:
            headers = {k: v.decode() for k, v in record.headers}
            dead.setdefault(int(headers["source.offset"]), []).append((headers, record))

    try:
        await consume_until(consumer, take, lambda: count >= expected, timeout, settle=1.0)
        return outputs, dead
    finally:
        await consumer.stop()


@pytest.mark.integration
def test_hostile_catalog_through_the_real_worker(
    kafka_bootstrap: str, worker_process: WorkerFactory
) -> None:
    suffix = uuid.uuid4().hex[:8]
    topics = Topics(f"in-hostile-{suffix}", f"out-hostile-{suffix}", f"dlq-hostile-{suffix}",
                    f"group-hostile-{suffix}")  # fmt: skip
    asyncio.run(create_topics_for_big_records(kafka_bootstrap, topics))
    cases = catalog()
    assert len(cases) >= 25
    taken = asyncio.run(produce_cases(kafka_bootstrap, topics.input, cases))
    assert len(taken) >= len(cases) - 2, "only the records over 1 MB may be refused"
    worker = worker_process(topics)
    outputs, dead = asyncio.run(read_fates(kafka_bootstrap, topics, len(taken), timeout=90))

    problems = []
    for offset, case in taken.items():
        scored = outputs.get(case.output_id, [])
        lettered = dead.get(offset, [])
        if case.expected == SCORED:
            if len(scored) != 1 or lettered:
                problems.append(f"{case.name}: {len(scored)} outputs, {len(lettered)} dead letters")
            continue
        kinds = [headers["error.kind"] for headers, _ in lettered]
        if kinds != [case.expected] or scored:
            problems.append(
                f"{case.name}: expected {case.expected}, got {kinds}, {len(scored)} out"
            )
            continue
        headers, record = lettered[0]
        assert headers["error.detail"], case.name
        assert headers["source.topic"] == topics.input and headers["source.partition"] == "0"
        if case.size < 1_000_000:  # copied untouched
            assert (record.key, record.value) == (case.record_key, case.value), case.name
        else:  # too large to copy: the headers say where the original is
            assert record.value == b"" and "too large to copy" in headers["error.detail"]
    assert not problems, "\n".join(problems)
    assert worker.proc.poll() is None, f"the worker died:\n{worker.log()}"
    assert "fatal" not in worker.log()
    assert worker.terminate() == 0
    log = worker.log()
    for offset in dead:  # one line per dead letter, even when a smaller one is re-sent
        assert log.count(f"dead-lettering {topics.input}[0]@{offset}:") == 1, offset


# --- the parser, fuzzed ------------------------------------------------------------------

REASONS = set(ErrorKind)


def check_decode(value: bytes | None, limit: int = 64) -> None:
    """The parser's contract: a valid Comment, or InvalidMessage with a stable reason."""
    try:
        comment = decode_comment(value, max_text_bytes=limit)
    except InvalidMessage as bad:
        assert bad.kind in REASONS and bad.detail
        return
    assert isinstance(comment.id, str) and 1 <= len(comment.id) <= 256
    assert (
        isinstance(comment.text, str)
        and len(comment.text.encode("utf-8", "surrogatepass")) <= limit
    )
    if comment.metadata is not None:
        assert isinstance(comment.metadata, dict)
        orjson.dumps(comment.metadata)  # it can be passed through to the output


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.one_of(st.none(), st.binary(max_size=300)))
def test_decode_survives_arbitrary_bytes(value: bytes | None) -> None:
    check_decode(value)


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
    # no subnormals: an inference library loaded earlier in the process (OpenVINO, ONNX Runtime)
    # may have set flush-to-zero, and hypothesis refuses to draw them then; JSON decoding does
    # not care about them
    st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False), st.text(max_size=40),
)  # fmt: skip
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
field_values = st.one_of(json_values, st.text(max_size=300))


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["id", "text", "created_at", "metadata", "other"]), field_values, max_size=5
    )
)
def test_decode_classifies_structured_objects(payload: dict) -> None:
    """Objects with the right keys and arbitrary values: the verdict matches an oracle."""
    value = orjson.dumps(payload)
    id_, text, meta = payload.get("id"), payload.get("text"), payload.get("metadata")
    created = payload.get("created_at")
    fields_ok = (
        isinstance(id_, str) and 1 <= len(id_) <= 256 and isinstance(text, str)
        and (meta is None or isinstance(meta, dict))
        and (created is None or (isinstance(created, int) and not isinstance(created, bool)))
    )  # fmt: skip
    try:
        comment = decode_comment(value, max_text_bytes=64)
    except InvalidMessage as bad:
        if not fields_ok:
            assert bad.kind == ErrorKind.INVALID_FIELD
        else:
            assert bad.kind == ErrorKind.TEXT_TOO_LARGE and len(text.encode()) > 64
        return
    assert fields_ok or isinstance(created, str)  # a string created_at may be a valid RFC 3339
    assert comment.id == id_ and comment.text == text


@FUZZ
@given(st.binary(min_size=1, max_size=60), st.integers(0, 200))
def test_decode_survives_mutated_valid_records(noise: bytes, at: int) -> None:
    """A valid record with bytes overwritten or inserted somewhere."""
    valid = orjson.dumps({"id": "x", "text": "hello there", "metadata": {"a": [1, 2]}})
    at %= len(valid)
    check_decode(valid[:at] + noise + valid[at + len(noise) :])
    check_decode(valid[:at] + noise + valid[at:])


def test_catalog_verdicts_without_a_broker() -> None:
    """The same catalog through the parser alone (fast feedback when the worker test fails)."""
    for case in catalog(include_huge=False):
        if case.expected == ErrorKind.OUTPUT_TOO_LARGE:
            continue
        try:
            comment = decode_comment(case.value, max_text_bytes=MAX_TEXT_BYTES)
        except InvalidMessage as bad:
            assert bad.kind == case.expected, case.name
        else:
            assert case.expected == SCORED and comment.id == case.output_id, case.name


async def test_dead_letter_of_a_keyless_tombstone_is_publishable() -> None:
    """aiokafka (like Kafka) refuses a record with neither key nor value: the dead letter of a
    key-less tombstone gets an empty value instead of stopping the worker."""
    from aiokafka import TopicPartition
    from aiokafka.structs import ConsumerRecord

    from worker.metrics import Metrics
    from worker.pipeline.checkpoint import Checkpoint
    from worker.pipeline.publish import Publisher
    from worker.pipeline.records import InFlight

    sent: list[tuple[bytes | None, bytes | None]] = []

    class Producer:
        async def send(self, topic, value=None, key=None, headers=None):
            assert not (value is None and key is None), "Need at least one: key or value"
            sent.append((key, value))
            future = asyncio.get_running_loop().create_future()
            future.set_result(None)
            return future

        async def flush(self) -> None:
            pass

    fatal: list[BaseException] = []
    checkpoint = Checkpoint(consumer=None, metrics=Metrics(), drain_timeout_s=1)  # type: ignore[arg-type]
    publisher = Publisher(
        Producer(),  # type: ignore[arg-type]
        output_topic="out",
        dlq_topic="dlq",
        checkpoint=checkpoint,
        metrics=Metrics(),
        on_fatal=fatal.append,
    )
    record = ConsumerRecord("in", 0, 7, 0, 0, None, None, None, -1, -1, [])
    item = InFlight(record=record, ticket=checkpoint.track(TopicPartition("in", 0), 7))
    publisher.dead_letter_soon(item, ErrorKind.NOT_AN_OBJECT, "record has no value (tombstone)")
    await publisher.flush()
    await asyncio.sleep(0)
    assert not fatal and sent == [(None, b"")]
    assert checkpoint.in_flight() == 0
