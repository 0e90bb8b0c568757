"""`moderation-train feedback-export`: moderator decisions (`schemas.feedback.Feedback`) from the
feedback topic or a JSON-lines file, folded into a Jigsaw-format CSV.

The CSV has `id`, `comment_text` and one column per label (the six Jigsaw labels unless told
otherwise): 1, 0, or empty where no decision judged that label. Decisions are folded per comment
and label: the last decision on a label wins (ordered by `decided_at`, then by the order read:
partition offset, or line), so a later partial decision on one label keeps the earlier ones on
the others; the text is the latest one given. Decisions are filtered by `--tenant` and `--since`
before folding. Comments whose decisions carry no text (the source asked not to store it) cannot
be trained or scored on: they are counted and left out. Records that are not valid feedback are
counted and left out; neither stops the export. Labels outside the CSV's columns are counted.

The topic is read without a consumer group (nothing committed): every partition from its
beginning up to its end offset at the start of the read.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.artifact import TOXICITY_LABELS
from schemas.feedback import FEEDBACK_TOPIC, Feedback, to_epoch_ms
from training.feedback_data import FeedbackError

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 30.0  # the longest wait for a fetch that returns nothing before giving up


def parse_since(text: str) -> int:
    """`--since`: an RFC 3339 timestamp (naive: UTC) or epoch milliseconds -> epoch ms."""
    if text.strip().isdigit():
        return int(text.strip())
    try:
        parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"--since: expected an RFC 3339 timestamp or epoch milliseconds, got {text!r}"
        ) from None
    return to_epoch_ms(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))


@dataclass
class ExportCounts:
    """What an export read, used and left out."""

    read: int = 0
    bad: int = 0
    other_tenant: int = 0
    before_since: int = 0
    decisions: int = 0
    without_text: int = 0  # comments left out: no decision on them carried text
    no_known_label: int = 0  # decisions none of whose labels is a column
    unknown_labels: set[str] = field(default_factory=set)
    rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["unknown_labels"] = sorted(self.unknown_labels)
        return out


@dataclass
class _Folded:
    text: str | None = None
    text_at: tuple[int, int] = (-1, -1)
    labels: dict[str, tuple[tuple[int, int], int]] = field(default_factory=dict)


def fold(
    records: Iterable[bytes | str],
    columns: Sequence[str],
    counts: ExportCounts,
    *,
    tenant: str | None = None,
    since_ms: int | None = None,
) -> dict[str, _Folded]:
    """Comment id -> its folded decisions (see the module doc); `counts` is filled in."""
    folded: dict[str, _Folded] = {}
    for order, raw in enumerate(records):
        counts.read += 1
        try:
            record = Feedback.model_validate_json(raw)
        except ValidationError:
            counts.bad += 1
            continue
        if tenant is not None and record.tenant != tenant:
            counts.other_tenant += 1
            continue
        when = record.decided_at_ms()
        if since_ms is not None and when < since_ms:
            counts.before_since += 1
            continue
        known = {k: v for k, v in record.labels.items() if k in columns}
        counts.unknown_labels |= set(record.labels) - set(columns)
        if not known:
            counts.no_known_label += 1
            continue
        counts.decisions += 1
        key = (when, order)
        entry = folded.setdefault(record.id, _Folded())
        if record.text is not None and record.text.strip() and key > entry.text_at:
            entry.text, entry.text_at = record.text, key
        for label, value in known.items():
            if label not in entry.labels or key > entry.labels[label][0]:
                entry.labels[label] = (key, value)
    return folded


def write_csv(
    folded: dict[str, _Folded], columns: Sequence[str], output: Path, counts: ExportCounts
) -> None:
    """The CSV (atomically: a temporary file beside `output`, then renamed)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["id", "comment_text", *columns])
            for comment_id, entry in folded.items():
                if entry.text is None:
                    counts.without_text += 1
                    continue
                cells = [str(entry.labels[c][1]) if c in entry.labels else "" for c in columns]
                writer.writerow([comment_id, entry.text, *cells])
                counts.rows += 1
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def file_records(path: Path) -> Iterator[bytes]:
    """The non-blank lines of a JSON-lines feedback file."""
    if not path.is_file():
        raise FeedbackError(f"--file {path}: no such file")
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield line


async def topic_records(
    bootstrap: str, topic: str, *, timeout_s: float = READ_TIMEOUT_S, **client: Any
) -> list[bytes]:
    """Every record value of `topic`, from the beginning of each partition to its end offset
    at the start (no group, nothing committed). `FeedbackError` when the topic does not exist
    or the brokers cannot be reached."""
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import KafkaError

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
        auto_offset_reset="earliest", **client,
    )  # fmt: skip
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise FeedbackError(f"--bootstrap-servers {bootstrap}: cannot connect ({exc})") from None
    values: list[bytes] = []
    try:
        ids = consumer.partitions_for_topic(topic) if topic in await consumer.topics() else None
        if not ids:
            raise FeedbackError(f"--topic {topic}: no such topic on {bootstrap}")
        assigned = [TopicPartition(topic, p) for p in sorted(ids)]
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        ends = await consumer.end_offsets(assigned)
        # some brokers (tansu) answer ListOffsets with the start of the last batch + 1: the end
        # is the larger of that and the high watermark of the partition's first fetch
        known: set[TopicPartition] = set()
        remaining = set(assigned)
        idle_since = time.monotonic()
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=500)
            for tp in remaining - known:
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    ends[tp] = max(ends[tp], highwater)
                    known.add(tp)
            for tp, messages in batch.items():
                values.extend(
                    m.value for m in messages if m.offset < ends[tp] and m.value is not None
                )
            done = {tp for tp in remaining & known if await consumer.position(tp) >= ends[tp]}
            done |= {tp for tp in remaining if ends[tp] == 0}  # an empty partition
            if batch or done:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > timeout_s:
                raise FeedbackError(
                    f"--topic {topic}: no records for {timeout_s:.0f} s before the end offsets"
                )
            remaining -= done
    except KafkaError as exc:
        raise FeedbackError(f"--topic {topic}: read failed ({exc})") from None
    finally:
        await consumer.stop()
    return values


def export_feedback(
    output: Path,
    *,
    bootstrap_servers: str | None = None,
    topic: str = FEEDBACK_TOPIC,
    file: Path | None = None,
    tenant: str | None = None,
    since: int | None = None,
    columns: Sequence[str] = TOXICITY_LABELS,
) -> dict[str, Any]:
    """Read the decisions (topic or file), fold them and write the CSV; returns the counts. One
    line to stderr for comments left out without text and one for bad records."""
    import sys

    if (bootstrap_servers is None) == (file is None):
        raise FeedbackError("give either --bootstrap-servers (the topic) or --file (JSON lines)")
    records: Iterable[bytes] = (
        file_records(file)
        if file is not None
        else asyncio.run(topic_records(str(bootstrap_servers), topic))
    )
    counts = ExportCounts()
    folded = fold(records, list(columns), counts, tenant=tenant, since_ms=since)
    write_csv(folded, list(columns), output, counts)
    if counts.without_text:
        print(
            f"feedback-export: {counts.without_text} comment(s) left out: their decisions carry "
            "no text (the source asked not to store it)",
            file=sys.stderr,
        )
    if counts.bad:
        print(
            f"feedback-export: {counts.bad} of {counts.read} record(s) are not valid feedback "
            "(schemas/feedback.schema.json) and were skipped",
            file=sys.stderr,
        )
    if counts.unknown_labels:
        print(
            f"feedback-export: label(s) {', '.join(sorted(counts.unknown_labels))} are not CSV "
            f"columns and were ignored ({counts.no_known_label} decision(s) had no other)",
            file=sys.stderr,
        )
    log.info("feedback-export: %s", counts.as_dict())
    return {"rows": counts.rows, **counts.as_dict()}
