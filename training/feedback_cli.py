"""The `moderation-train` subcommands of the feedback loop: `feedback-export`, `calibrate` and
`thresholds` (registered by `training.cli`). Values the parser cannot check (targets, `--since`)
are checked when the command is bound, so that a bad one is one line and exit 2."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.artifact import TOXICITY_LABELS
from schemas.feedback import FEEDBACK_TOPIC
from training.sources import check_directory, check_file


def _labels(value: str) -> list[str]:
    labels = [v.strip() for v in value.split(",") if v.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("expected comma-separated label names")
    return labels


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the feedback subcommands on `sub`."""
    p = sub.add_parser(
        "feedback-export",
        help="moderator decisions (feedback topic or JSON-lines file) -> Jigsaw-format CSV",
        description="Read Feedback records from the topic (beginning to the end offsets at "
        "start, no group) or a JSON-lines file and write id, comment_text and one column per "
        "label (1, 0, empty: not judged); the last decision per comment and label wins.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--bootstrap-servers", default=None, help="brokers host:port,...")
    source.add_argument(
        "--file",
        type=Path,
        default=None,
        help="JSON-lines feedback file (MODERATION_FEEDBACK_FILE)",
    )
    p.add_argument("--topic", default=FEEDBACK_TOPIC, help="feedback topic (default %(default)s)")
    p.add_argument("--tenant", default=None, help="only this tenant's decisions")
    p.add_argument(
        "--since", default=None, help="only decisions at or after this time (RFC 3339 or epoch ms)"
    )
    p.add_argument(
        "--label-columns",
        type=_labels,
        default=list(TOXICITY_LABELS),
        help="label columns (default: the six Jigsaw labels)",
    )
    p.add_argument("--output", type=Path, required=True, help="CSV to write")

    p = sub.add_parser(
        "calibrate",
        help="re-fit a model's calibration and base rates on moderator feedback",
        description="Platt scaling per judged label on the feedback, base rate = the feedback's "
        "rate, folded into the head (weights otherwise untouched), thresholds mapped so no flag "
        "changes; a new artifact version and a cross-fitted before/after ECE report.",
    )
    p.add_argument("--model", type=Path, required=True, help="artifact or run directory")
    p.add_argument("--feedback", type=Path, required=True, help="feedback CSV (feedback-export)")
    p.add_argument("--output", type=Path, required=True, help="artifact directory to write")
    p.add_argument(
        "--labels", type=_labels, default=None, help="labels to re-fit (default: all judged)"
    )
    p.add_argument(
        "--min-per-class",
        type=int,
        default=30,
        help="judged positives and negatives a label needs (default %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)

    p = sub.add_parser(
        "thresholds",
        help="per-label thresholds meeting precision/recall targets on feedback -> policy file",
        description="The lowest threshold whose bootstrap lower bound (95%%) of precision meets "
        "--target-precision, or the highest whose lower bound of recall meets --target-recall, "
        "on the feedback scored by --model; written into a versioned threshold policy file.",
    )
    p.add_argument("--model", type=Path, required=True, help="the artifact the worker serves")
    p.add_argument("--feedback", type=Path, required=True, help="feedback CSV (feedback-export)")
    p.add_argument(
        "--target-precision", action="append", default=[], metavar="LABEL=P", help="repeatable"
    )
    p.add_argument(
        "--target-recall", action="append", default=[], metavar="LABEL=R", help="repeatable"
    )
    p.add_argument(
        "--tenant", default=None, help="set this tenant's thresholds (default: the defaults)"
    )
    p.add_argument("--policy-in", type=Path, default=None, help="policy file to update")
    p.add_argument(
        "--policy-out", type=Path, required=True, help="policy file to write (.json or YAML)"
    )
    p.add_argument("--version", default=None, help="the new policy version (default: bumped)")
    p.add_argument(
        "--min-per-class",
        type=int,
        default=10,
        help="judged positives and negatives a label needs (default %(default)s)",
    )
    p.add_argument("--bootstrap-rounds", type=int, default=1000)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)


def check_sources(args: argparse.Namespace) -> None:
    """The directories and files the command names exist (`UsageError`)."""
    if args.command in ("calibrate", "thresholds"):
        check_directory(args.model, "--model")
        check_file(args.feedback, "--feedback")
    if args.command == "thresholds" and args.policy_in is not None:
        check_file(args.policy_in, "--policy-in")
    if args.command == "feedback-export" and args.file is not None:
        check_file(args.file, "--file")


def bind(args: argparse.Namespace) -> Callable[[], Any]:
    """The call the parsed feedback command stands for; ValueError (one line) for values the
    parser cannot check. Transformers' progress bars are hidden: a refusal stays one line."""
    if args.command != "feedback-export":
        from huggingface_hub.utils import disable_progress_bars
        from transformers.utils import logging as hf_logging

        disable_progress_bars()
        hf_logging.disable_progress_bar()
    if args.command == "feedback-export":
        from training.feedback_export import export_feedback, parse_since

        return functools.partial(
            export_feedback,
            args.output,
            bootstrap_servers=args.bootstrap_servers,
            topic=args.topic,
            file=args.file,
            tenant=args.tenant,
            since=parse_since(args.since) if args.since is not None else None,
            columns=args.label_columns,
        )
    if args.command == "calibrate":
        from training.feedback_calibrate import calibrate_on_feedback

        return functools.partial(
            calibrate_on_feedback,
            args.model,
            args.feedback,
            args.output,
            labels=args.labels,
            min_per_class=args.min_per_class,
            max_length=args.max_length,
            batch_size=args.batch_size,
            force=args.force,
        )
    if args.command == "thresholds":
        from training.feedback_thresholds import parse_target, thresholds_from_feedback

        targets = [parse_target("precision", t) for t in args.target_precision]
        targets += [parse_target("recall", t) for t in args.target_recall]
        if not targets:
            raise ValueError(
                "give at least one --target-precision LABEL=P or --target-recall LABEL=R"
            )
        return functools.partial(
            thresholds_from_feedback,
            args.model,
            args.feedback,
            targets,
            args.policy_out,
            tenant=args.tenant,
            policy_in=args.policy_in,
            version=args.version,
            min_per_class=args.min_per_class,
            rounds=args.bootstrap_rounds,
            max_length=args.max_length,
            batch_size=args.batch_size,
        )
    raise AssertionError(args.command)
