"""`moderation-train` command line: fit, distill, evaluate, export, baseline, and the feedback
loop's feedback-export, calibrate and thresholds (`training.feedback_cli`).

A thin argparse layer: each subcommand parses its flags into the typed options of the matching
function (`training.fit.fit`, `training.distill.distill`, `training.evaluate.evaluate_model`,
`training.export.export_model`, `training.baseline.run_baseline`) and calls it. Bad arguments
exit 2 with argparse's message; bad data or files exit non-zero with a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from training import DEFAULT_BASE_MODEL
from training.data import DataError, DataOptions
from training.provenance import portable_command
from training.sources import (
    OFFLINE_RECIPE,
    UsageError,
    check_directory,
    check_file,
    check_model_source,
)

if TYPE_CHECKING:  # torch and transformers load only once a command runs
    from training.evaluate import ThresholdRule
    from training.loop import LoopConfig
    from training.run import PosWeight, RunOptions

T = TypeVar("T")
FEEDBACK_COMMANDS = ("feedback-export", "calibrate", "thresholds")  # training.feedback_cli


def _label_list(value: str) -> list[str]:
    labels = [v.strip() for v in value.split(",") if v.strip()]
    if not labels:
        raise argparse.ArgumentTypeError("expected comma-separated label column names")
    return labels


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return number


def parse_float_list(value: str) -> list[float]:
    """`1,2.5` -> [1.0, 2.5] (an argparse type)."""
    try:
        return [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        message = f"expected comma-separated numbers, got {value!r}"
        raise argparse.ArgumentTypeError(message) from None


def _threshold_rule(value: str) -> ThresholdRule:
    if value == "f1":
        return "f1"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'f1' or a number, got {value!r}") from None


def parse_pos_weight(value: str) -> PosWeight:
    """`auto`, comma-separated values, or '' for none (an argparse type)."""
    if not value:
        return None
    if value == "auto":
        return "auto"
    try:
        return parse_float_list(value)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or comma-separated numbers, got {value!r}"
        ) from None


def parse_base_rates(value: str) -> dict[str, float] | str:
    """`training`, `jigsaw` (the full Jigsaw set's rates), or `label=rate,...` with each rate
    strictly between 0 and 1 (argparse type)."""
    if value.strip() == "training":
        return "training"
    if value.strip() == "jigsaw":
        return "jigsaw"
    rates: dict[str, float] = {}
    for item in (v.strip() for v in value.split(",")):
        label, sep, rate = item.partition("=")
        try:
            number = float(rate)
        except ValueError:
            number = math.nan
        if not sep or not label.strip() or not 0.0 < number < 1.0:
            raise argparse.ArgumentTypeError(
                f"expected 'training', 'jigsaw' or label=rate pairs with 0 < rate < 1, got {item!r}"
            )
        rates[label.strip()] = number
    return rates


def _add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--train",
        "--data",
        dest="train",
        type=Path,
        required=True,
        help="labeled training file: Jigsaw CSV or generic CSV/JSONL (.gz ok); fit: empty "
        "label cells (not judged, e.g. moderator feedback) are masked out of the loss",
    )
    g.add_argument(
        "--val",
        type=Path,
        default=None,
        help="validation file (default: 20%% split of --train, random_state 42)",
    )
    g.add_argument(
        "--text-column", default="comment_text", help="text column (default %(default)s)"
    )
    g.add_argument(
        "--label-columns",
        type=_label_list,
        default=None,
        help="comma-separated label columns (default: the six Jigsaw labels)",
    )
    g.add_argument(
        "--skip-bad-rows",
        action="store_true",
        help="skip and count malformed rows instead of failing",
    )
    g.add_argument("--test-size", type=_fraction, default=0.2, help="validation split fraction")
    g.add_argument("--split-seed", type=int, default=42, help="train_test_split random_state")


def _add_loop_args(p: argparse.ArgumentParser, *, lr: float, epochs: float, batch: int) -> None:
    g = p.add_argument_group("training")
    g.add_argument(
        "--output-dir",
        type=Path,
        required=True,
        help="run directory: checkpoint/, model/ (the artifact), eval/, history.json",
    )
    g.add_argument("--epochs", type=float, default=epochs, help="epochs (default %(default)s)")
    g.add_argument("--batch-size", type=_positive_int, default=batch)
    g.add_argument("--learning-rate", "--lr", type=float, default=lr)
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--warmup-ratio", type=_fraction, default=0.06)
    g.add_argument("--max-length", type=_positive_int, default=128, help="max tokens per text")
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--bf16", action="store_true", help="bf16 autocast (faster on recent CPUs)")
    g.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    g.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    g.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    g.add_argument(
        "--stop-after-steps",
        type=_positive_int,
        default=None,
        help="stop (with a checkpoint) after this many steps; rerun to resume",
    )
    g.add_argument(
        "--thresholds",
        type=_threshold_rule,
        default="f1",
        help="per-label thresholds: 'f1' (max F1 on validation) or a fixed value",
    )
    g.add_argument(
        "--pos-weight",
        type=parse_pos_weight,
        default=None,
        help="BCE positive weights for rare labels: 'auto' or comma-separated values",
    )
    g.add_argument("--model-name", default=None, help="model_name stored in config.json")
    g.add_argument("--fp16", action="store_true", help="store fp16 weights in the artifact")
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bars (training, and transformers' weight loading and saving)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog="moderation-train",
        description="Fine-tune, distill, evaluate and export multi-label toxicity models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "fit",
        help="fine-tune a model with BCE on labeled data",
        description="Fine-tune AutoModelForSequenceClassification (multi-label).",
        epilog=f"Without network access the default base model cannot be downloaded: "
        f"{OFFLINE_RECIPE}.",
    )
    p.add_argument(
        "--base-model",
        default=DEFAULT_BASE_MODEL,
        help="hub id or local model directory (default %(default)s, from the hub; "
        "offline: see below)",
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer hub id or path (default: base)")
    p.add_argument(
        "--from-config",
        action="store_true",
        help="random weights from the base model's config (no pretrained weights)",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="MODEL_DIR",
        help="fine-tune this served artifact (or run directory): its weights, tokenizer and "
        "labels (instead of --base-model); the candidate is compared with it on the held-out "
        "rows (eval/candidate_vs_current.md)",
    )
    p.add_argument(
        "--mix",
        default=None,
        metavar="ORIGINAL.csv:FRACTION",
        help="add rows drawn from ORIGINAL.csv to the training rows, FRACTION of the result "
        "(e.g. 0.5: as many as the --data training rows); validation stays --data's",
    )
    p.add_argument(
        "--pooling",
        choices=("cls", "mean"),
        default="cls",
        help="cls: the stock AutoModelForSequenceClassification (what the worker serves); "
        "mean: masked mean pooling + linear head, for teachers from sentence-embedding "
        "checkpoints (e.g. all-MiniLM-L6-v2); usable by distill, not by the worker",
    )
    _add_data_args(p)
    _add_loop_args(p, lr=5e-5, epochs=3, batch=32)

    p = sub.add_parser(
        "distill",
        help="train a student on labels + a teacher's soft targets",
        description="Knowledge distillation: alpha*BCE(labels) + (1-alpha)*"
        "T^2*BCE(sigmoid(student/T), sigmoid(teacher/T)).",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        action="append",
        default=[],
        help="exported teacher artifact (repeat for an ensemble)",
    )
    p.add_argument(
        "--teacher-weights",
        type=parse_float_list,
        default=None,
        help="comma-separated ensemble weights for --teacher ... then --tfidf-teacher",
    )
    p.add_argument(
        "--tfidf-teacher",
        action="store_true",
        help="add a TF-IDF+logistic-regression teacher (out-of-fold on training text)",
    )
    p.add_argument(
        "--teacher-cache",
        type=Path,
        default=None,
        help="directory caching teacher outputs (computed once per text set)",
    )
    p.add_argument("--teacher-batch-size", type=_positive_int, default=64)
    p.add_argument("--teacher-bf16", action="store_true", help="bf16 autocast for the teacher")
    s = p.add_mutually_exclusive_group(required=True)
    s.add_argument("--student", default=None, help="pretrained student: hub id or local path")
    s.add_argument(
        "--student-config",
        default=None,
        help="build a random student from this config (hub id or path)",
    )
    p.add_argument("--tokenizer", default=None, help="tokenizer (default: student / config path)")
    p.add_argument(
        "--init-embeddings",
        default=None,
        help="initialise word+position embeddings from a PCA projection of this "
        "model's (same vocabulary)",
    )
    p.add_argument("--alpha", type=_fraction, default=0.5, help="weight of the hard-label BCE")
    p.add_argument("--temperature", type=float, default=2.0, help="soft-target temperature T")
    p.add_argument(
        "--hidden-distill",
        type=float,
        default=0.0,
        help="weight of pooled hidden-state distillation through a learned "
        "student->teacher projection (0 = off; first --teacher only)",
    )
    p.add_argument(
        "--unlabeled",
        type=Path,
        action="append",
        default=[],
        help="unlabeled text file (teacher targets only; .txt/.csv/.jsonl)",
    )
    p.add_argument(
        "--augment",
        type=int,
        default=0,
        help="teacher-labeled augmented copies per training text (transfer set)",
    )
    _add_data_args(p)
    _add_loop_args(p, lr=1e-4, epochs=10, batch=32)

    p = sub.add_parser(
        "evaluate",
        help="metrics, report.md and plots for a model on labeled data",
        description="Mean BCE, ROC-AUC, PR-AUC and F1 at the stored thresholds.",
    )
    p.add_argument("--model", type=Path, required=True, help="artifact or run directory")
    p.add_argument("--data", type=Path, required=True, help="labeled CSV/JSONL file")
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--text-column", default="comment_text")
    p.add_argument(
        "--label-columns",
        type=_label_list,
        default=None,
        help="label columns (default: the model's labels)",
    )
    p.add_argument("--skip-bad-rows", action="store_true")
    p.add_argument("--max-length", type=_positive_int, default=128)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--history", type=Path, default=None, help="history.json for the loss plot")

    p = sub.add_parser(
        "export",
        help="write the artifact the worker serves",
        description="save_pretrained directory: safetensors, tokenizer, config "
        "with id2label/problem_type/label_thresholds, model card.",
    )
    p.add_argument("source", type=Path, help="run directory or artifact directory")
    p.add_argument("output", type=Path, help="artifact directory to write")
    p.add_argument("--fp16", action="store_true", help="store fp16 weights")
    p.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty directory that is not an earlier export of this model "
        "(or into the source itself), the artifact files there replaced; or export a model "
        "that looks collapsed (near-constant scores or chance ranking on validation)",
    )
    p.add_argument(
        "--text-column",
        default="comment_text",
        help="text column of --calibration-data and --onnx-check-data (default %(default)s)",
    )
    p.add_argument("--metrics", type=Path, default=None, help="metrics.json for the model card")
    p.add_argument("--model-name", default=None)
    p.add_argument("--model-version", default=None, help="default: sha256 of the weights")
    p.add_argument(
        "--onnx", action="store_true", help="also write model.onnx (needs the `onnx` extra)"
    )
    p.add_argument(
        "--onnx-check-data",
        type=Path,
        default=None,
        help="labeled CSV: model.int8.onnx is written only if it passes the accuracy rule on "
        "its validation split (mean ROC-AUC drop <= 0.002, flag agreement >= 99.5%% per label)",
    )
    p.add_argument(
        "--calibration-data",
        type=Path,
        default=None,
        help="labeled CSV/JSONL: fit a per-label calibration (Platt scaling) on its validation "
        "split (20%%, random_state 42) and fold it, with the prior correction to --base-rates, "
        "into the classifier head; thresholds are mapped so that no flag decision changes",
    )
    p.add_argument(
        "--base-rates",
        type=parse_base_rates,
        default=None,
        help="label=rate,... the label rates the calibrated probabilities assume (default: "
        "the rates of --calibration-data's validation split, no prior correction); 'jigsaw' "
        "for the full Jigsaw train set's (toxic=0.096,severe_toxic=0.01,obscene=0.053,"
        "threat=0.003,insult=0.049,identity_hate=0.009; what traffic like Jigsaw's sample, "
        "3x richer in toxic rows, needs); labels not named keep the calibration data's rate, "
        "or a calibrated source's; 'training' = the calibration data's. Without "
        "--calibration-data: re-shift a calibrated source, no refit. Export logs the rates "
        "it assumed and where they came from",
    )
    p.add_argument(
        "--calibration-from",
        type=Path,
        default=None,
        help="a calibrated artifact of the same recipe trained on --calibration-data's "
        "training split: for a model refitted on ALL rows (none held out), fit the "
        "calibration so that its probabilities reproduce that artifact's on the texts of "
        "that training split, and take over its thresholds and base rates",
    )

    p = sub.add_parser(
        "baseline",
        help="TF-IDF word+char n-grams + logistic regression",
        description="Train and evaluate the TF-IDF+LR baseline on the split.",
    )
    _add_data_args(p)
    p.add_argument("--output-dir", type=Path, required=True)

    from training import feedback_cli

    feedback_cli.add_parsers(sub)
    return parser


def _options(cls: type[T], args: argparse.Namespace, **explicit: Any) -> T:
    """An options dataclass from the flags named like its fields, plus `explicit` values."""
    names = {f.name for f in dataclasses.fields(cls)} - explicit.keys()  # type: ignore[arg-type]
    return cls(**{name: getattr(args, name) for name in names if hasattr(args, name)}, **explicit)


def _loop_config(args: argparse.Namespace) -> LoopConfig:
    from training.loop import LoopConfig

    return _options(LoopConfig, args, progress=not args.no_progress)


def _run_options(args: argparse.Namespace, argv: Sequence[str]) -> RunOptions:
    from training.run import RunOptions

    return _options(
        RunOptions,
        args,
        fp16_export=args.fp16,
        resume=not args.no_resume,
        command=portable_command(["moderation-train", *argv]),
    )


def check_sources(args: argparse.Namespace) -> None:
    """The models and directories the command names exist or can be fetched (`UsageError`),
    checked before torch and transformers are imported."""
    if args.command == "fit":
        if args.init_from is not None:
            check_directory(args.init_from, "--init-from")
        else:
            check_model_source(args.base_model, "--base-model")
        if args.tokenizer:
            check_model_source(args.tokenizer, "--tokenizer")
        if args.mix:
            from training.fit import parse_mix

            check_file(parse_mix(args.mix)[0], "--mix")
    elif args.command == "distill":
        for teacher in args.teacher:
            check_directory(teacher, "--teacher")
        if args.student:
            check_model_source(args.student, "--student")
        if args.student_config:
            check_model_source(args.student_config, "--student-config")
        for flag in ("init_embeddings", "tokenizer"):
            if getattr(args, flag):
                check_model_source(getattr(args, flag), "--" + flag.replace("_", "-"))
    elif args.command == "evaluate":
        check_directory(args.model, "--model")
        if args.history:
            check_file(args.history, "--history")
    elif args.command in FEEDBACK_COMMANDS:
        from training import feedback_cli

        feedback_cli.check_sources(args)
    elif args.command == "export":
        check_directory(args.source, "source")
        for flag in ("metrics", "onnx_check_data"):
            if getattr(args, flag):
                check_file(getattr(args, flag), "--" + flag.replace("_", "-"))


def bind_command(args: argparse.Namespace, argv: Sequence[str]) -> Callable[[], Any]:
    """The function call a parsed command line stands for (not yet made). Raises ValueError
    for option combinations the parser cannot check."""
    if args.command == "fit":
        from training.fit import fit, parse_mix

        return functools.partial(
            fit,
            _options(DataOptions, args),
            _run_options(args, argv),
            _loop_config(args),
            base_model=args.base_model,
            tokenizer=args.tokenizer,
            from_config=True if args.from_config else None,
            pos_weight=args.pos_weight,
            pooling=args.pooling,
            init_from=args.init_from,
            mix=parse_mix(args.mix) if args.mix else None,
        )
    if args.command == "distill":
        from training.distill import DistillOptions, distill

        options = _options(
            DistillOptions,
            args,
            student=args.student or args.student_config,
            student_from_config=args.student_config is not None,
            teachers=args.teacher,
        )
        data = _options(DataOptions, args)
        return functools.partial(
            distill, data, _run_options(args, argv), _loop_config(args), options
        )
    if args.command == "evaluate":
        from training.evaluate import evaluate_model

        return functools.partial(
            evaluate_model,
            args.model,
            args.data,
            args.output_dir,
            text_column=args.text_column,
            label_columns=args.label_columns,
            max_length=args.max_length,
            batch_size=args.batch_size,
            skip_bad_rows=args.skip_bad_rows,
            history_path=args.history,
        )
    if args.command == "export":
        from training.export import export_model

        return functools.partial(
            export_model,
            args.source,
            args.output,
            fp16=args.fp16,
            metrics_path=args.metrics,
            model_name=args.model_name,
            model_version=args.model_version,
            onnx=args.onnx,
            onnx_check=args.onnx_check_data,
            force=args.force,
            calibration_data=args.calibration_data,
            base_rates=args.base_rates,
            calibration_from=args.calibration_from,
            text_column=args.text_column,
        )
    if args.command in FEEDBACK_COMMANDS:
        from training import feedback_cli

        return feedback_cli.bind(args)
    if args.command == "baseline":
        from training.baseline import run_baseline

        return functools.partial(run_baseline, _options(DataOptions, args), args.output_dir)
    raise AssertionError(args.command)


def hide_progress_bars() -> None:
    """`--no-progress` hides every bar: ours, and those of transformers ("Loading weights",
    "Writing model shards") and of the hub client."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as hf_logging

    disable_progress_bars()
    hf_logging.disable_progress_bar()


# What every command needs beyond the serving install (the extras `torch` and `train`).
TRAIN_LIBRARIES = ("torch", "transformers", "safetensors")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `moderation-train` and `python -m training`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = [name for name in TRAIN_LIBRARIES if importlib.util.find_spec(name) is None]
    if missing:  # `pip install moderation-worker` serves without torch (issue 26)
        parser.exit(
            2,
            f"moderation-train: error: {', '.join(missing)} not installed: training needs the "
            "train extra: pip install 'moderation-worker[train]' (torch first, pinned)\n",
        )
    try:
        check_sources(args)
        command = bind_command(args, argv)
    except ValueError as exc:  # missing models, option combinations: one line, like bad data
        parser.exit(2, f"moderation-train: error: {exc}\n")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if getattr(args, "no_progress", False):
        hide_progress_bars()
    try:
        metrics = command()
    except (DataError, UsageError) as exc:
        print(f"moderation-train: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"moderation-train: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if isinstance(metrics, dict):
        keys = ("mean_roc_auc", "bce", "mean_f1", "skipped_rows")
        summary = {k: metrics.get(k) for k in keys if k in metrics}
        collapse = metrics.get("collapse") or {}
        if collapse:
            summary["collapsed"] = bool(collapse.get("collapsed"))
        print(json.dumps(summary or metrics))
        if collapse.get("collapsed"):  # the last line a user sees: the model is not usable
            from training.collapse import CollapseCheck, collapse_message

            check = CollapseCheck.from_dict(collapse)
            model = f"{args.output_dir}/model"
            print(
                f"moderation-train: warning: {collapse_message(check, model, 'validation')} "
                "(export refuses it without --force)",
                file=sys.stderr,
            )
    return 0
