"""The refit that ships (`--all-rows --calibration-from`): the recipe trained on ALL rows,
calibrated to reproduce the recipe's 80/20 build, whose validation figures (and those of other
`--split-seed` builds) the card states as the estimate."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas.artifact import WEIGHTS_FILE, read_contract
from training.artifact_files import INFO_FILE
from training.data import DataOptions, load_dataset, split_dataset
from training.known_misses import record_known_misses
from training.recipe import Recipe, Steps, export_student, train_models, write_csv
from training.reference_figures import headline


def refit(
    recipe: Recipe, reference: Path, command: str, other_splits: Sequence[Path] = ()
) -> dict[str, Any]:
    """The recipe's teacher and student on ALL rows of `recipe.data`, calibrated to reproduce
    `reference` (the recipe's 80/20 build) and exported into `recipe.output`; returns the
    summary. The card's figures are the reference's validation figures (the estimate), beside
    those of the recipe on `other_splits` (work directories of `--split-seed` builds)."""
    work = recipe.work_dir
    work.mkdir(parents=True, exist_ok=True)
    steps = Steps(work)
    estimate = json.loads((reference / INFO_FILE).read_text())  # before `output` may replace it
    estimate_of = read_contract(reference)
    staged_reference = work / "reference"  # the export reads it after `output` is replaced
    if reference.resolve() != staged_reference.resolve():
        shutil.copytree(reference, staged_reference, dirs_exist_ok=True)
    _, val = split_dataset(load_dataset(recipe.data))
    # the loops log validation figures: these rows are trained on, so theirs mean nothing
    in_sample = write_csv(work / "val20-in-sample.csv", val)
    train_models(recipe, DataOptions(train=recipe.data, val=in_sample), steps, command)

    student_info = work / "student" / "model" / INFO_FILE
    info = json.loads(student_info.read_text())
    if "in_sample_validation" not in info:  # the student's own figures, on rows it learned
        info["in_sample_validation"] = headline(info["metrics"])
    seconds = {
        name: json.loads((work / name / "model" / INFO_FILE).read_text())["train_seconds"]
        for name in ("teacher", "student")
    }
    described = f"`{estimate_of.model_name}` `{estimate_of.model_version}`"
    others = [split_estimate(directory) for directory in other_splits]
    info.update(
        command=command,
        val_data=(
            f"none held out: trained on all {info['train_rows']:,} rows. The figures below are "
            f"the estimate: the same recipe's 80/20 build ({described}) on its validation "
            f"split, {estimate['val_data']}"
        ),
        val_rows=estimate["val_rows"],
        metrics=estimate["metrics"],
        estimate_from={
            "model_name": estimate_of.model_name,
            "model_version": estimate_of.model_version,
            "train_rows": estimate["train_rows"],
            "val_rows": estimate["val_rows"],
            "reference_validation": estimate.get("reference_validation"),
            "other_splits": others,
        },
        notes=[
            f"This model is the fixed recipe of `make default-model` trained on ALL "
            f"{info['train_rows']:,} shared rows: no setting was tuned again. Its validation "
            f"figures above are the estimate from the recipe's 80/20 build ({described}, "
            f"trained on {estimate['train_rows']:,} rows, measured on the other "
            f"{estimate['val_rows']:,}); this model learned from those rows too, so nothing is "
            "left to measure it on. Trained on 25% more rows, it is expected to do at least as "
            "well; that is not measured. Its own figures on those rows are in-sample and "
            f"mean nothing as an estimate: mean ROC-AUC "
            f"{info['in_sample_validation']['mean_roc_auc']:.4f}.",
            *(split_note(other, estimate) for other in others),
            *(f"From the 80/20 build: {note}" for note in estimate.get("notes") or []),
            "Wall time of this build on 2 CPU cores: "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
            + ".",
        ],
    )
    student_info.write_text(json.dumps(info, indent=2) + "\n")
    steps.run(
        "export",
        lambda: export_student(
            work / "student", recipe.output, work / "export", recipe.data, staged_reference
        ),
    )
    record_known_misses(recipe.output)
    exported = json.loads((recipe.output / INFO_FILE).read_text())
    steps.summary.update(
        estimate=headline(estimate["metrics"]),
        in_sample=info["in_sample_validation"],
        agreement_with_reference=exported["calibration"]["agreement_with_reference"],
        known_misses=exported["known_misses"],
        artifact_bytes=(recipe.output / WEIGHTS_FILE).stat().st_size,
    )
    steps.seconds.update({k: v for k, v in seconds.items() if k not in steps.seconds})
    steps.save()
    print(json.dumps(steps.summary, indent=2))
    return steps.summary


def split_estimate(work: Path) -> dict[str, Any]:
    """The validation figures of a `--split-seed` build's work directory, and its seed."""
    validation = json.loads((work / "summary.json").read_text())["validation"]
    val_data = json.loads((work / "student" / "model" / INFO_FILE).read_text())["val_data"]
    seed = re.search(r"random_state=(\d+)", val_data)
    if seed is None:
        raise ValueError(f"{work}: not the work directory of a --split-seed build")
    return {
        "split_seed": int(seed.group(1)),
        **{
            name: validation[name]
            for name in ("student", "tfidf_lr", "teacher", "student_minus_tfidf_bootstrap")
        },
    }


def split_note(other: dict[str, Any], estimate: dict[str, Any]) -> str:
    """The card's line on the recipe's figures on another split, beside the 80/20 build's."""
    ours, boot = estimate["reference_validation"], other["student_minus_tfidf_bootstrap"]
    return (
        f"The same recipe on another 80/20 split (random_state={other['split_seed']}), whose "
        "rows no setting was chosen on: student mean ROC-AUC "
        f"{other['student']['mean_roc_auc']:.4f}, TF-IDF+LR "
        f"{other['tfidf_lr']['mean_roc_auc']:.4f}, MiniLM-L6 teacher "
        f"{other['teacher']['mean_roc_auc']:.4f} (on the split above: "
        f"{estimate['metrics']['mean_roc_auc']:.4f}, {ours['tfidf_lr']['mean_roc_auc']:.4f}, "
        f"{ours['teacher']['mean_roc_auc']:.4f}). There the student is above TF-IDF+LR by "
        f"{boot['gain']:+.4f} (paired bootstrap, 95% interval [{boot['ci95_low']:+.4f}, "
        f"{boot['ci95_high']:+.4f}], gain <= 0 in {boot['p_gain_le_0']:.1%} of "
        f"{boot['resamples']} resamples): the gain on the split above is partly that split's "
        "and the settings chosen on it."
    )
