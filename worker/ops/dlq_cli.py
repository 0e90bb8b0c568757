"""`moderation-worker dlq inspect|redrive`: the dead-letter tools' arguments and output.

Connection settings are the worker's (`KAFKA_BOOTSTRAP_SERVERS`, `MODERATION_DLQ_TOPIC`,
`MODERATION_INPUT_TOPIC`, `MODERATION_GROUP_ID`, the Kafka security variables), flags on top.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import orjson

from schemas import ErrorKind
from worker.config import Settings
from worker.ops.dlq import (
    DlqError,
    Inspection,
    Redrive,
    check_redrive_target,
    inspect,
    parse_time,
    printable_line,
    redrive,
)

# flag -> settings field, for `load_settings(**overrides)` (worker/cli.py)
DLQ_FLAGS = {
    "--bootstrap-servers": "bootstrap_servers",
    "--dlq-topic": "dlq_topic",
    "--input-topic": "input_topic",
}


def _time(text: str) -> int:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a count (0 or more)")
    return int(text)


def add_parser(commands: Any) -> None:
    """The `dlq` command and its two subcommands, on the main parser's subparsers."""
    dlq = commands.add_parser(
        "dlq",
        help="inspect the dead-letter topic or re-drive its records",
        description="Flags override the environment (KAFKA_BOOTSTRAP_SERVERS, MODERATION_*).",
    )
    tools = dlq.add_subparsers(dest="dlq_command", required=True, parser_class=type(dlq))
    kinds = [kind.value for kind in ErrorKind]

    def common(parser: argparse.ArgumentParser) -> None:
        for flag, field in DLQ_FLAGS.items():
            env = "KAFKA_BOOTSTRAP_SERVERS" if field == "bootstrap_servers" else None
            parser.add_argument(
                flag, dest=field, default=None, help=f"env {env or 'MODERATION_' + field.upper()}"
            )
        parser.add_argument("--json", action="store_true", help="print JSON")

    look = tools.add_parser(
        "inspect",
        help="counts by error.kind, source partition and age; samples with their headers",
        description="Reads the whole dead-letter topic; commits nothing. The comment text "
        "(the record value) is printed only with --show-text.",
    )
    common(look)
    look.add_argument("--kind", choices=kinds, help="only dead letters of this error.kind")
    look.add_argument("--samples", type=_count, default=3, help="samples per kind (3)")
    look.add_argument("--show-text", action="store_true", help="print the values of the samples")

    again = tools.add_parser(
        "redrive",
        help="re-produce dead letters of one kind to the input topic (dry run by default)",
        description="Re-produces the original key, value and headers of each dead letter of "
        "--kind (plus redrive.* headers) to the input topic or --to, once per source.* "
        "coordinates; commits its own consumer group, so a second run does not repeat the "
        "first. Times: RFC 3339, a date, epoch ms, or a duration ago (30m, 6h, 2d).",
    )
    common(again)
    again.add_argument("--kind", required=True, choices=kinds, help="error.kind to re-drive")
    again.add_argument("--since", type=_time, help="dead-lettered at or after this time")
    again.add_argument(
        "--until", type=_time, help="dead-lettered at or before this time (later ones stay)"
    )
    again.add_argument(
        "--to",
        help="topic to produce to (default: the input topic); the output topics, the dead-letter "
        "topic and internal topics (__*) are refused without --force-topic",
    )
    again.add_argument(
        "--force-topic", action="store_true", help="re-drive to --to even where it is refused"
    )
    again.add_argument(
        "--group-id", help="consumer group of the re-drive (default: <group>-dlq-redrive-<kind>)"
    )
    mode = again.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", dest="execute", action="store_false", help="report only (the default)"
    )
    mode.add_argument("--execute", dest="execute", action="store_true", help="produce and commit")
    again.set_defaults(execute=False)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run `dlq <command>`; returns the exit status."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its errors end as one line here
    if args.dlq_command == "redrive" and args.since and args.until and args.since > args.until:
        print("moderation-worker dlq redrive: --since is after --until", file=sys.stderr)
        return 2
    try:
        if args.dlq_command == "inspect":
            report: Inspection | Redrive = asyncio.run(
                inspect(settings, kind=args.kind, samples=args.samples, show_text=args.show_text)
            )
        else:
            report = _redrive(args, settings)
    except DlqError as exc:
        line = printable_line(f"moderation-worker dlq {args.dlq_command}: {exc}")
        print(line, file=sys.stderr)
        return exc.exit_code
    if args.json:
        sys.stdout.write(orjson.dumps(report.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
    elif isinstance(report, Inspection):
        print_inspection(report)
    else:
        print_redrive(report)
    return 0


def _redrive(args: argparse.Namespace, settings: Settings) -> Redrive:
    """A dry run; with --execute, the dry run's plan on stderr first, then the re-drive."""
    to = args.to or settings.input_topic
    check_redrive_target(to, settings, force=args.force_topic)

    def run(execute: bool) -> Redrive:
        return asyncio.run(
            redrive(
                settings,
                kind=ErrorKind(args.kind),
                to=to,
                since_ms=args.since,
                until_ms=args.until,
                execute=execute,
                group_id=args.group_id,
            )
        )

    if not args.execute:
        return run(False)
    plan = run(False)
    _say(
        f"moderation-worker dlq redrive: will re-drive {plan.redriven} dead letters of kind "
        f"{plan.kind} from {plan.dlq_topic} to {plan.to} (group {plan.group}); executing",
        file=sys.stderr,
    )
    return run(True)


def _say(line: str, file: Any = None) -> None:
    """Print one line with its control characters escaped (what a producer wrote must not
    reach the operator's terminal)."""
    print(printable_line(line), file=file or sys.stdout)


def print_inspection(report: Inspection) -> None:
    data = report.to_json()
    _say(f"{report.topic}: {report.records} dead letters, oldest {data['oldest']}, "
         f"newest {data['newest']}")  # fmt: skip
    for title, counts in (("error.kind", "by_kind"), ("source", "by_source"), ("age", "by_age")):
        _say(f"by {title}:")
        for name, count in data[counts].items():
            _say(f"  {name:<24} {count}")
    if report.samples:
        _say("samples (values hidden; --show-text prints them):")
    for item in report.samples:
        _say(f"  {item['kind']}  {item['dlq']}  {item['timestamp']}  key={item['key']!r}  "
             f"value: {item['value_bytes']} bytes")  # fmt: skip
        for name, value in item["headers"]:
            _say(f"    {name}: {value}")
        if "value" in item:
            _say(f"    value: {item['value']}")


def print_redrive(report: Redrive) -> None:
    verb = "re-drove" if report.execute else "dry run: would re-drive"
    _say(f"{verb} {report.redriven} dead letters of kind {report.kind} from {report.dlq_topic} "
         f"to {report.to} (group {report.group})")  # fmt: skip
    _say(
        f"  read {report.scanned}; skipped: {report.other_kinds} other kinds, "
        f"{report.before_since} before --since, {report.duplicates} duplicates (same source), "
        f"{report.no_payload} without payload (originals too large to copy: see source.*)"
    )
    if report.stopped_at_until:
        _say(f"  stopped at --until: {report.stopped_at_until} (left for a later run)")
    for example in report.examples:
        _say(f"  {example}")
    if report.execute:
        _say(f"  committed {report.committed or 'nothing (nothing new)'}")
    else:
        _say("  nothing produced, nothing committed: add --execute to re-drive")
