"""`moderation-worker dlq inspect|redrive`: the real CLI against the real broker and worker."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import orjson
import pytest

from schemas import DeadLetterHeaders, ErrorKind, RedriveHeaders
from testing.kafka import comment, committed_offsets, produce, read_all
from testing.topics import Topics
from testing.worker_process import REPO_ROOT, WorkerFactory
from worker.ops.dlq import original_headers, parse_time

LONG = "this comment is longer than the first worker's limit of forty bytes"
NOW_MS = 1_764_590_400_000  # 2025-12-01T12:00:00Z


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker", "dlq", *args],
        cwd=REPO_ROOT, env=os.environ | (env or {}), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def cli_json(topics: Topics, bootstrap: str, *args: str) -> dict[str, Any]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MODERATION_INPUT_TOPIC": topics.input,
        "MODERATION_DLQ_TOPIC": topics.dlq,
        "MODERATION_GROUP_ID": topics.group,
    }
    result = cli(*args, "--json", env=env)
    assert result.returncode == 0, result.stderr
    return orjson.loads(result.stdout)


def count(bootstrap: str, topic: str, at_least: int) -> int:
    """Records in `topic`: at least `at_least` arrive, then a second more is waited for."""
    return len(asyncio.run(read_all(bootstrap, topic, at_least, settle=1.0)))


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["redrive"], "the following arguments are required: --kind"),
        (["redrive", "--kind", "bogus"], "argument --kind: invalid choice: 'bogus'"),
        (
            ["redrive", "--kind", "invalid_json", "--since", "yesterday"],
            "'yesterday' is not a time",
        ),
        (["redrive", "--kind", "invalid_json", "--dry-run", "--execute"], "not allowed with"),
        (
            ["redrive", "--kind", "invalid_json", "--since", "1h", "--until", "2h"],
            "--since is after",
        ),
        (["inspect", "--samples", "-1"], "is not a count"),
        (["redrive", "--kind", "invalid_json", "--to", "comment-scores"], "an output topic"),
        (["redrive", "--kind", "invalid_json", "--to", "comment-scores-shadow"], "output topic"),
        (["redrive", "--kind", "invalid_json", "--to", "comments-dlq", "--execute"], "itself"),
        (["redrive", "--kind", "invalid_json", "--to", "__consumer_offsets"], "internal topic"),
        (["purge"], "invalid choice: 'purge'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    """Refused before any broker is asked (none listens on the address given)."""
    result = cli(*args, env={"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert lines[0].startswith("moderation-worker dlq")


def test_times() -> None:
    assert parse_time("2025-12-01T12:00:00Z") == NOW_MS
    assert parse_time("2025-12-01T13:00:00+01:00") == NOW_MS
    assert parse_time("2025-12-01") == NOW_MS - 12 * 3_600_000
    assert parse_time(str(NOW_MS)) == NOW_MS
    assert parse_time("90s", now_ms=NOW_MS) == NOW_MS - 90_000
    assert parse_time("2d", now_ms=NOW_MS) == NOW_MS - 2 * 86_400_000
    with pytest.raises(ValueError):
        parse_time("3 fortnights")


def test_original_headers_drop_what_the_worker_and_a_redrive_added() -> None:
    letter = DeadLetterHeaders(
        error_kind=ErrorKind.INVALID_JSON, error_detail="d", source_topic="in",
        source_partition=0, source_offset=5,
    ).to_kafka()  # fmt: skip
    redrive = RedriveHeaders(
        count=1, at=0, error_kind=ErrorKind.INVALID_JSON, dlq_topic="dlq", dlq_partition=0,
        dlq_offset=1, source_topic="in", source_partition=0, source_offset=2,
    ).to_kafka()  # fmt: skip
    # the upstream producer's own `source.topic` header stays: only the worker's (last) goes
    own = [("source.topic", b"upstream"), ("traceparent", b"00-ab-cd-01")]
    assert original_headers(own + redrive + letter) == own


# ----------------------------------------------------------------------------- the broker


@pytest.mark.integration
def test_inspect_and_redrive_on_the_real_broker(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory
) -> None:
    traced = [("traceparent", b"00-0000000000000000000000000000abcd-00000000000000ef-01")]
    long = [(*comment(f"L{i}", LONG), [*traced, ("x-app", b"app-%d" % i)]) for i in range(3)]
    good = [comment(f"G{i}", "short and fine") for i in range(2)]
    bad_json = [(b"J", b"{not json", [])]
    asyncio.run(produce(kafka_bootstrap, topics.input, long + good + bad_json))

    # A worker with a 40-byte text limit dead-letters the long ones (text_too_large).
    first = worker_process(topics, extra_env={"MODERATION_MAX_TEXT_BYTES": "40"})
    dead = asyncio.run(read_all(kafka_bootstrap, topics.dlq, 4, settle=0.5))
    asyncio.run(read_all(kafka_bootstrap, topics.output, 2))
    assert first.terminate() == 0
    # The at-least-once worker may dead-letter a record twice: copy one dead letter again.
    twice = next(r for r in dead if r.key == b"L0")
    asyncio.run(
        produce(kafka_bootstrap, topics.dlq, [(twice.key, twice.value, list(twice.headers))])
    )

    # inspect: counts, sources, ages and samples with headers; the text only when asked
    report = cli_json(topics, kafka_bootstrap, "inspect", "--samples", "2")
    assert report["records"] == 5
    assert report["by_kind"] == {"text_too_large": 4, "invalid_json": 1}
    assert sum(report["by_source"].values()) == 5
    assert all(name.startswith(f"{topics.input}[") for name in report["by_source"])
    assert report["by_age"]["< 1h"] == 5
    assert [s["kind"] for s in report["samples"]].count("text_too_large") == 2
    sample = next(s for s in report["samples"] if s["kind"] == "text_too_large")
    assert dict(map(tuple, sample["headers"]))["x-app"] == f"app-{sample['key'][1:]}"
    assert dict(map(tuple, sample["headers"]))["error.kind"] == "text_too_large"
    assert LONG not in str(report) and sample["value_bytes"] == len(long[0][1])
    text = cli_json(topics, kafka_bootstrap, "inspect", "--kind", "invalid_json", "--show-text")
    assert text["records"] == 1 and text["samples"][0]["value"] == "{not json"
    human = cli("inspect", "--bootstrap-servers", kafka_bootstrap, "--dlq-topic", topics.dlq)
    assert human.returncode == 0 and "text_too_large" in human.stdout
    assert LONG not in human.stdout and "traceparent" in human.stdout

    # A worker without that limit runs; a dry run (the default) produces and commits nothing.
    worker_process(topics)
    produced = len(long + good + bad_json)
    dry = cli_json(topics, kafka_bootstrap, "redrive", "--kind", "text_too_large")
    assert dry["dry_run"] and dry["redriven"] == 3 and dry["duplicates"] == 1
    assert dry["other_kinds"] == 1 and dry["committed"] == {}
    assert count(kafka_bootstrap, topics.input, produced) == produced
    group = dry["group"]
    assert set(asyncio.run(committed_offsets(kafka_bootstrap, group, topics.dlq)).values()) == {
        None
    }
    # --until before every dead letter: nothing to do, and nothing committed past them
    early = cli_json(
        topics, kafka_bootstrap, "redrive", "--kind", "text_too_large", "--until", "1h",
        "--execute",
    )  # fmt: skip
    assert early["redriven"] == 0 and early["stopped_at_until"] == {f"{topics.dlq}[0]": 0}
    assert early["committed"] == {}

    # --execute: the original key, value and headers, plus redrive.*, to the input topic...
    done = cli_json(topics, kafka_bootstrap, "redrive", "--kind", "text_too_large", "--execute")
    assert done["redriven"] == 3 and done["duplicates"] == 1
    assert done["committed"] == {f"{topics.dlq}[0]": 5}
    records = asyncio.run(read_all(kafka_bootstrap, topics.input, produced + 3))
    again = [r for r in records if any(n == "redrive.count" for n, _ in r.headers)]
    assert sorted(r.key for r in again) == [b"L0", b"L1", b"L2"]
    letters = {r.key: r for r in dead}
    for record in again:
        i = int(record.key[1:])
        assert record.value == long[i][1]
        assert original_headers(record.headers) == long[i][2]
        added = RedriveHeaders.model_validate(
            {n: v.decode() for n, v in record.headers if n in RedriveHeaders.names()}
        )
        source = DeadLetterHeaders.from_kafka(
            [(n, v) for n, v in letters[record.key].headers if n.startswith(("error.", "source."))]
        )
        assert added.count == 1 and added.error_kind == ErrorKind.TEXT_TOO_LARGE
        assert (added.source_topic, added.source_partition, added.source_offset) == (
            source.source_topic, source.source_partition, source.source_offset
        )  # fmt: skip
        assert (added.dlq_topic, added.dlq_offset) == (topics.dlq, letters[record.key].offset)
    # ... where the running worker scores them (its trace context carried along)
    outputs = asyncio.run(read_all(kafka_bootstrap, topics.output, 5, settle=1.0))
    scored = {r.key: r for r in outputs}
    assert set(scored) == {b"L0", b"L1", b"L2", b"G0", b"G1"} and len(outputs) == 5
    assert list(scored[b"L1"].headers) == traced
    assert orjson.loads(scored[b"L1"].value)["id"] == "L1"

    # A second run re-drives nothing: the first one committed its group.
    second = cli_json(topics, kafka_bootstrap, "redrive", "--kind", "text_too_large", "--execute")
    assert second["redriven"] == 0 and second["scanned"] == 0 and second["committed"] == {}
    assert count(kafka_bootstrap, topics.input, produced + 3) == produced + 3
    # A topic that does not exist is a bad argument.
    missing = cli(
        "inspect", "--bootstrap-servers", kafka_bootstrap, "--dlq-topic", "no-such-topic-x"
    )
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "moderation-worker dlq inspect: topic 'no-such-topic-x' does not exist"
    )


@pytest.mark.integration
def test_reads_every_record_of_a_batch_and_names_foreign_records(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Five records in one batch (tansu's ListOffsets counts a batch as one offset: the end
    comes from the fetch's high watermark), one of them without dead-letter headers."""
    letters = [
        (
            b"k%d" % i,
            b"{bad",
            DeadLetterHeaders(
                error_kind=ErrorKind.INVALID_JSON,
                error_detail="d",
                source_topic=topics.input,
                source_partition=0,
                source_offset=i,
            ).to_kafka(),
        )
        for i in range(4)
    ]
    asyncio.run(produce(kafka_bootstrap, topics.dlq, [*letters, (b"x", b"foreign", [])]))
    report = cli_json(topics, kafka_bootstrap, "inspect")
    assert report["records"] == 5
    assert report["by_kind"] == {"invalid_json": 4, "(not a dead letter)": 1}
    future = cli_json(
        topics, kafka_bootstrap, "redrive", "--kind", "invalid_json", "--since", "2999-01-01"
    )
    assert future["scanned"] == 5 and future["before_since"] == 4 and future["redriven"] == 0
    assert future["other_kinds"] == 1
    env = {"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "MODERATION_DLQ_TOPIC": topics.dlq}
    nowhere = cli("redrive", "--kind", "invalid_json", "--to", "no-such-topic-y", "--execute",
                  env=env)  # fmt: skip
    assert nowhere.returncode == 2 and "'no-such-topic-y' does not exist" in nowhere.stderr


HOSTILE = "\x1b]0;pwned\x07\x1b[31m"  # sets the terminal's title, then turns the text red


@pytest.mark.integration
def test_inspect_escapes_what_producers_wrote_and_redrive_refuses_foreign_topics(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """Header names and values, keys and values of dead letters are a producer's: the text
    output escapes their control characters. `--to` refuses the output, dead-letter and
    internal topics unless --force-topic; --execute says what it will do first."""
    letters = [
        (
            b"k\x1b[2J%d" % i,
            f"{{bad {HOSTILE}".encode(),
            [
                (f"x-{HOSTILE}", HOSTILE.encode()),
                ("x-bidi", "\u202eevil".encode()),
                *DeadLetterHeaders(
                    error_kind=ErrorKind.INVALID_JSON,
                    error_detail=f"detail {HOSTILE}",
                    source_topic=f"{topics.input}\x1b[0m",
                    source_partition=0,
                    source_offset=i,
                ).to_kafka(),
            ],
        )
        for i in range(2)
    ]
    asyncio.run(produce(kafka_bootstrap, topics.dlq, letters))
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "MODERATION_INPUT_TOPIC": topics.input,
        "MODERATION_OUTPUT_TOPIC": topics.output,
        "MODERATION_DLQ_TOPIC": topics.dlq,
        "MODERATION_GROUP_ID": topics.group,
    }
    shown = cli("inspect", "--show-text", env=env)
    assert shown.returncode == 0, shown.stderr
    assert not [c for c in shown.stdout if c != "\n" and (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0)]
    assert "\u202e" not in shown.stdout and "\\u202eevil" in shown.stdout
    assert "x-\\x1b]0;pwned\\x07\\x1b[31m: \\x1b]0;pwned\\x07\\x1b[31m" in shown.stdout
    assert "value: {bad \\x1b]0;pwned" in shown.stdout and "detail \\x1b]0;pwned" in shown.stdout
    assert orjson.loads(cli("inspect", "--json", env=env).stdout)["samples"][0]["headers"][0] == [
        f"x-{HOSTILE}",
        HOSTILE,
    ]  # JSON escapes them itself, and keeps them exact

    for to, why in (
        (topics.output, "an output topic"),
        (f"{topics.output}-shadow", "an output topic"),
        (topics.dlq, "the dead-letter topic itself"),
        ("__consumer_offsets", "an internal topic"),
    ):
        refused = cli("redrive", "--kind", "invalid_json", "--to", to, "--execute", env=env)
        assert refused.returncode == 2
        assert refused.stderr.splitlines() == [
            f"moderation-worker dlq redrive: --to {to!r} is {why}; --force-topic to re-drive "
            "there anyway"
        ]
    forced = cli("redrive", "--kind", "invalid_json", "--to", topics.dlq, "--force-topic", env=env)
    assert forced.returncode == 0 and "would re-drive 2 dead letters" in forced.stdout

    done = cli("redrive", "--kind", "invalid_json", "--execute", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        f"moderation-worker dlq redrive: will re-drive 2 dead letters of kind invalid_json from "
        f"{topics.dlq} to {topics.input} (group {topics.group}-dlq-redrive-invalid_json); "
        "executing"
    ]
    assert done.stdout.startswith(f"re-drove 2 dead letters of kind invalid_json from {topics.dlq}")
    assert "\x1b" not in done.stdout and "\\x1b[0m[0]@0" in done.stdout
