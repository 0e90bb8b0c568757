"""The dead-letter topic for operators: read it (`inspect`) and re-drive records (`redrive`).

A dead letter is the original record's key, value and headers, plus the `error.*` and
`source.*` headers (`schemas.DeadLetterHeaders`) the worker appends. Re-driving produces the
original key, value and headers again (the dead-letter headers removed, `schemas.RedriveHeaders`
added) to the input topic, so that a worker scores it again, e.g. after a fix for
`inference_failed`.

Both read each partition of the dead-letter topic up to its end offset as of the start, so a
record dead-lettered again while a re-drive runs is left for the next run. `redrive` reads from
its own consumer group's committed offsets and commits what it has handled (after the broker
acknowledged what it produced), so a second run does not repeat the first; within one run it
re-drives each `source.*` coordinate once (the at-least-once worker may have dead-lettered a
record twice).

`redrive --to` takes only a topic the worker reads: the output topics (primary and shadow), the
dead-letter topic itself and internal topics (`__*`) are refused unless `force_topic`. Text
printed for the operator (`printable_line`) has every control character escaped: a producer
controls header names and values, keys and values, and must not reach the operator's terminal.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from schemas import DeadLetterHeaders, ErrorKind, RedriveHeaders
from worker.config import Settings
from worker.pipeline.kafka_clients import Headers, build_dlq_consumer, build_dlq_producer

DEAD_LETTER_HEADERS = frozenset(
    field.alias for field in DeadLetterHeaders.model_fields.values() if field.alias
)
REDRIVE_HEADERS = frozenset(RedriveHeaders.names())
NO_HEADERS = "(not a dead letter)"  # the kind of a record without valid dead-letter headers
AGE_BUCKETS = ((3600, "< 1h"), (86_400, "1h - 1d"), (7 * 86_400, "1d - 7d"))
OLDER = ">= 7d"
IDLE_TIMEOUT_S = 30.0
COMMIT_EVERY = 500  # records produced between two commits of the re-drive's progress


class DlqError(Exception):
    """What stops a dead-letter command, in one line; `exit_code` 2 for bad arguments or a topic
    that does not exist, 1 for the broker."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# Control characters (C0, DEL, C1) and the bidirectional overrides that reorder what a terminal
# shows: escaped in everything the text output prints.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable_line(text: str) -> str:
    """`text` with every control character escaped (`\\x1b`, `\\u202e`): safe to print."""
    return _CONTROL.sub(
        lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text
    )


def check_redrive_target(to: str, settings: Settings, *, force: bool = False) -> None:
    """`DlqError` (exit 2) if `to` is a topic a re-drive must not write raw records into: an
    output topic, the dead-letter topic or an internal topic, unless `force`."""
    if force:
        return
    if to == settings.dlq_topic:
        why = "the dead-letter topic itself"
    elif to in (settings.output_topic, settings.shadow_output_topic):
        why = "an output topic"
    elif to.startswith("__"):
        why = "an internal topic"
    else:
        return
    raise DlqError(
        f"--to {printable_line(repr(to))} is {why}; --force-topic to re-drive there anyway",
        exit_code=2,
    )


# ----------------------------------------------------------------------------- headers


def dead_letter_headers(headers: Iterable[tuple[str, bytes]] | None) -> DeadLetterHeaders | None:
    """The dead-letter headers the worker appended (the last of each name), None if absent or
    invalid."""
    found = {name: value for name, value in headers or () if name in DEAD_LETTER_HEADERS}
    try:
        return DeadLetterHeaders.model_validate({k: v.decode() for k, v in found.items()})
    except (UnicodeDecodeError, ValidationError):
        return None


def original_headers(headers: Iterable[tuple[str, bytes]] | None) -> Headers:
    """The original record's headers: without the dead-letter headers the worker appended (the
    last occurrence of each name) and without the headers of an earlier re-drive."""
    listed = list(headers or ())
    appended: set[int] = set()
    pending = set(DEAD_LETTER_HEADERS)
    for index in range(len(listed) - 1, -1, -1):
        if listed[index][0] in pending:
            pending.discard(listed[index][0])
            appended.add(index)
    return [
        (name, value)
        for index, (name, value) in enumerate(listed)
        if index not in appended and name not in REDRIVE_HEADERS
    ]


def redrive_count(headers: Iterable[tuple[str, bytes]] | None) -> int:
    """How many times the original was re-driven before (its `redrive.count`, else 0)."""
    count = 0
    for name, value in headers or ():
        if name == "redrive.count":
            try:
                count = int(value.decode())
            except (UnicodeDecodeError, ValueError):
                count = 0
    return count


def redrive_headers(record: ConsumerRecord, letter: DeadLetterHeaders, now_ms: int) -> Headers:
    """The headers to re-produce `record` (a dead letter) with."""
    kept = original_headers(record.headers)
    added = RedriveHeaders(
        count=redrive_count(record.headers) + 1,
        at=now_ms,
        error_kind=letter.error_kind,
        dlq_topic=record.topic,
        dlq_partition=record.partition,
        dlq_offset=record.offset,
        source_topic=letter.source_topic,
        source_partition=letter.source_partition,
        source_offset=letter.source_offset,
    )
    return kept + added.to_kafka()


# ----------------------------------------------------------------------------- time


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """Epoch milliseconds from `2026-12-01T10:00:00Z` / `2026-12-01` (RFC 3339 or ISO 8601 date;
    UTC unless an offset is given), from epoch milliseconds (`1764583200000`) or from a duration
    ago (`90s`, `30m`, `6h`, `2d`, `1w`). ValueError otherwise."""
    text = text.strip()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if text.isdigit():
        return int(text)
    if match := _DURATION.fullmatch(text):
        return now_ms - int(float(match.group(1)) * _UNIT_S[match.group(2)] * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: use RFC 3339 (2026-12-01T10:00:00Z), a date, epoch "
            "milliseconds or a duration ago (30m, 6h, 2d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def iso(ms: int | None) -> str | None:
    if ms is None or ms < 0:
        return None
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


def age_bucket(timestamp_ms: int, now_ms: int) -> str:
    age_s = (now_ms - timestamp_ms) / 1000
    return next((label for limit, label in AGE_BUCKETS if age_s < limit), OLDER)


# ----------------------------------------------------------------------------- reading


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    if topic not in await consumer.topics():
        raise DlqError(f"topic {topic!r} does not exist", exit_code=2)
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


async def read_range(
    consumer: AIOKafkaConsumer,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    stopped: set[TopicPartition] | None = None,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> AsyncIterator[ConsumerRecord]:
    """Records of each partition from `starts` up to (not including) its end, in offset order
    per partition. The end is the larger of `ends` (the broker's end offsets at the start) and
    the high watermark of the partition's first fetch (some brokers, tansu among them, answer
    ListOffsets with the start of the last record batch + 1); `ends` is updated to it. A
    partition the caller adds to `stopped` is read no further. The consumer must have the
    partitions assigned."""
    stopped = set() if stopped is None else stopped
    todo = set(starts)
    known: set[TopicPartition] = set()  # partitions whose end is final
    for tp in starts:
        consumer.seek(tp, starts[tp])
    last_progress = time.monotonic()
    while todo - stopped:
        active = todo - stopped
        fetched = await consumer.getmany(*active, timeout_ms=500)
        for tp in active - known:
            highwater = consumer.highwater(tp)
            if highwater is not None:
                ends[tp] = max(ends[tp], highwater)
                known.add(tp)
        for tp, records in fetched.items():
            for record in records:
                if record.offset >= ends[tp] or tp in stopped:
                    break
                yield record
        done = {tp for tp in active & known if await consumer.position(tp) >= ends[tp]}
        if fetched or done:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > idle_timeout_s:
            left = {f"{tp.topic}[{tp.partition}]": ends[tp] for tp in active}
            raise DlqError(f"no records for {idle_timeout_s:.0f}s while reading up to {left}")
        todo -= done


async def _start(consumer: AIOKafkaConsumer, settings: Settings) -> None:
    try:
        await consumer.start()
    except Exception as exc:
        await consumer.stop()
        raise DlqError(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc!r}") from None


# ----------------------------------------------------------------------------- inspect


@dataclass
class Inspection:
    """What `dlq inspect` reports."""

    topic: str
    records: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    by_age: Counter[str] = field(default_factory=Counter)
    oldest_ms: int | None = None
    newest_ms: int | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "records": self.records,
            "by_kind": dict(self.by_kind.most_common()),
            "by_source": dict(sorted(self.by_source.items())),
            "by_age": {label: self.by_age[label] for _, label in AGE_BUCKETS}
            | {OLDER: self.by_age[OLDER]},
            "oldest": iso(self.oldest_ms),
            "newest": iso(self.newest_ms),
            "samples": self.samples,
        }


def _printable(data: bytes | None, limit: int = 200) -> str | None:
    if data is None:
        return None
    text = data.decode("utf-8", errors="backslashreplace")
    return text if len(text) <= limit else text[:limit] + f"... ({len(data)} bytes)"


def sample(record: ConsumerRecord, show_text: bool) -> dict[str, Any]:
    """One dead letter for the operator's eyes: coordinates, key, headers; the value (the
    comment) only with `show_text`."""
    out: dict[str, Any] = {
        "dlq": f"{record.topic}[{record.partition}]@{record.offset}",
        "timestamp": iso(record.timestamp),
        "key": _printable(record.key),
        "value_bytes": None if record.value is None else len(record.value),
        "headers": [[name, _printable(value, 500)] for name, value in record.headers or ()],
    }
    if show_text:
        out["value"] = None if record.value is None else record.value.decode("utf-8", "replace")
    return out


async def inspect(
    settings: Settings,
    *,
    kind: str | None = None,
    samples: int = 3,
    show_text: bool = False,
    now_ms: int | None = None,
) -> Inspection:
    """Read the whole dead-letter topic (no consumer group, nothing committed)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    consumer = build_dlq_consumer(settings, group_id=None)
    await _start(consumer, settings)
    report = Inspection(settings.dlq_topic)
    try:
        tps = await topic_partitions(consumer, settings.dlq_topic)
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        sampled: Counter[str] = Counter()
        async for record in read_range(consumer, starts, ends):
            letter = dead_letter_headers(record.headers)
            record_kind = letter.error_kind.value if letter else NO_HEADERS
            if kind is not None and record_kind != kind:
                continue
            report.records += 1
            report.by_kind[record_kind] += 1
            if letter is not None:
                report.by_source[f"{letter.source_topic}[{letter.source_partition}]"] += 1
            if record.timestamp is not None and record.timestamp >= 0:
                report.by_age[age_bucket(record.timestamp, now_ms)] += 1
                report.oldest_ms = min(report.oldest_ms or record.timestamp, record.timestamp)
                report.newest_ms = max(report.newest_ms or record.timestamp, record.timestamp)
            if sampled[record_kind] < samples:
                sampled[record_kind] += 1
                report.samples.append({"kind": record_kind} | sample(record, show_text))
    finally:
        await consumer.stop()
    return report


# ----------------------------------------------------------------------------- redrive


@dataclass
class Redrive:
    """What `dlq redrive` did (or, in a dry run, would do)."""

    dlq_topic: str
    to: str
    kind: str
    group: str
    execute: bool
    since_ms: int | None = None
    until_ms: int | None = None
    scanned: int = 0  # dead letters read
    redriven: int = 0  # produced (a dry run: would be)
    other_kinds: int = 0
    before_since: int = 0
    duplicates: int = 0  # same source.* coordinates as one already re-driven in this run
    no_payload: int = 0  # no key, empty value: the original was too large (see source.*)
    stopped_at_until: dict[str, int] = field(default_factory=dict)
    committed: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["dry_run"] = not out.pop("execute")
        out["since"] = iso(out.pop("since_ms"))
        out["until"] = iso(out.pop("until_ms"))
        return out


async def redrive(
    settings: Settings,
    *,
    kind: ErrorKind,
    to: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    execute: bool = False,
    group_id: str | None = None,
    examples: int = 10,
) -> Redrive:
    """Re-produce the dead letters of `kind` (dead-lettered in [since, until]) to `to` (default:
    the input topic). Without `execute` nothing is produced and nothing committed."""
    group = group_id or f"{settings.group_id}-dlq-redrive-{kind.value}"
    report = Redrive(
        settings.dlq_topic, to or settings.input_topic, kind.value, group, execute, since_ms,
        until_ms,
    )  # fmt: skip
    consumer = build_dlq_consumer(settings, group_id=group)
    await _start(consumer, settings)
    producer: AIOKafkaProducer | None = None
    try:
        tps = await topic_partitions(consumer, settings.dlq_topic)
        if execute:
            if report.to not in await consumer.topics():
                raise DlqError(f"topic {report.to!r} does not exist", exit_code=2)
            producer = build_dlq_producer(settings)
            await producer.start()
        consumer.assign(tps)
        beginnings = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        starts = {}
        for tp in tps:
            committed = await consumer.committed(tp)
            starts[tp] = beginnings[tp] if committed is None else max(committed, beginnings[tp])
        await _redrive_range(consumer, producer, report, starts, ends, kind, examples)
    finally:
        if producer is not None:
            await producer.stop()
        await consumer.stop()
    return report


async def _redrive_range(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer | None,
    report: Redrive,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
    kind: ErrorKind,
    examples: int,
) -> None:
    seen: set[tuple[str, int, int]] = set()
    stopped: set[TopicPartition] = set()
    handled = dict(starts)  # per partition: the next offset not yet handled
    pending: list[asyncio.Future[Any]] = []
    now_ms = int(time.time() * 1000)

    async def commit() -> None:
        if producer is None:  # a dry run commits nothing
            return
        await asyncio.gather(*pending)  # acknowledged before the commit passes them
        pending.clear()
        moved = {tp: offset for tp, offset in handled.items() if offset > starts[tp]}
        if moved:
            await consumer.commit(moved)
            for tp, offset in moved.items():
                report.committed[f"{tp.topic}[{tp.partition}]"] = offset

    async for record in read_range(consumer, starts, ends, stopped):
        tp = TopicPartition(record.topic, record.partition)
        if report.until_ms is not None and record.timestamp > report.until_ms:
            stopped.add(tp)  # later records are left for a later run: not committed
            report.stopped_at_until[f"{tp.topic}[{tp.partition}]"] = record.offset
            continue
        report.scanned += 1
        handled[tp] = record.offset + 1
        letter = dead_letter_headers(record.headers)
        if letter is None or letter.error_kind != kind:
            report.other_kinds += 1
            continue
        if report.since_ms is not None and record.timestamp < report.since_ms:
            report.before_since += 1
            continue
        if record.key is None and not record.value:
            report.no_payload += 1
            continue
        coordinates = (letter.source_topic, letter.source_partition, letter.source_offset)
        if coordinates in seen:
            report.duplicates += 1
            continue
        seen.add(coordinates)
        report.redriven += 1
        if len(report.examples) < examples:
            report.examples.append(
                f"{record.topic}[{record.partition}]@{record.offset} <- "
                f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
            )
        if producer is not None:
            headers = redrive_headers(record, letter, now_ms)
            pending.append(
                await producer.send(report.to, value=record.value, key=record.key, headers=headers)
            )
            if len(pending) >= COMMIT_EVERY:
                await commit()
    for tp in ends:
        if tp not in stopped:
            handled[tp] = max(handled[tp], ends[tp])  # read to the end (gaps included)
    await commit()
