"""The calibration steps of an export: fit a calibration on a labeled file's validation split,
re-shift one to other base rates, or match a calibrated reference artifact; each folds its
affine map into the model's head and records itself in the training info (the card's
calibration section reads it). The statistics are `training.calibration`'s."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from schemas.artifact import ArtifactContract, read_contract
from training.artifact_files import INFO_FILE, resolve_model_dir
from training.calibration import BaseRates, CalibrationFit

log = logging.getLogger(__name__)

RequestedRates = BaseRates | Literal["jigsaw"]
"""`--base-rates`: per-label rates, `"training"` or None (the calibration data's own), or
`"jigsaw"` (the full Jigsaw set's)."""


def jigsaw_rates(labels: list[str]) -> dict[str, float]:
    """`--base-rates jigsaw`: the full Jigsaw set's rates, for the labels the model has."""
    from training.calibration import JIGSAW_BASE_RATES

    return {label: rate for label, rate in JIGSAW_BASE_RATES.items() if label in labels}


def requested_rates(
    labels: list[str], base_rates: RequestedRates, fallback: dict[str, float], fallback_from: str
) -> tuple[dict[str, float], str]:
    """The rates to assume per label and, in words, where they came from: `base_rates` as
    given (`"jigsaw"`: the full Jigsaw set's), and for every label it does not name, or all
    of them for None and `"training"`, `fallback` (from `fallback_from`)."""
    if base_rates is None or base_rates == "training":
        return dict(fallback), fallback_from
    if base_rates == "jigsaw":
        named, given = jigsaw_rates(labels), "Jigsaw's full train set (--base-rates jigsaw)"
    else:
        named, given = dict(base_rates), "given (--base-rates)"  # type: ignore[arg-type]
    unknown = sorted(set(named) - set(labels))
    if unknown:
        from training.calibration import CalibrationError

        raise CalibrationError(f"--base-rates names label(s) the model does not have: {unknown}")
    others = [label for label in labels if label not in named]
    source = given + (f"; {', '.join(others)}: {fallback_from}" if others else "")
    return {**fallback, **named}, source


def calibrate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contract: ArtifactContract,
    data: Path | None,
    base_rates: RequestedRates,
    info: dict[str, Any],
    *,
    text_column: str = "comment_text",
) -> CalibrationFit:
    """Fit (on the validation split of `data`) or re-shift the calibration, fold it into
    `model`'s head, and record it with its cross-fitted ECE table in `info["calibration"]`.

    The base rates: `base_rates` for the labels it names (`"jigsaw"`: the full Jigsaw set's);
    every other label keeps the rate of `data`'s validation split (no prior correction), or
    when re-shifting, the source's base rate. Where they came from is logged and recorded
    (`base_rates_from`). With `data`, the source's probabilities on those rows are checked
    for collapse (`training.collapse`), recorded as `info["calibration"]["collapse"]`."""
    from training.calibration import (
        CalibrationError,
        calibration_table,
        fit_calibration,
        raw_logits,
        reshift,
        sigmoid,
    )
    from training.collapse import check_collapse
    from training.data import DataOptions, load_split
    from training.modeling import fold_affine_into_head, predict

    labels = list(contract.labels)
    extra: dict[str, Any] = {}
    if data is None:
        if contract.calibration is None or contract.label_training_rates is None:
            raise CalibrationError(
                "--base-rates without --calibration-data needs an already calibrated source "
                "(its label_training_rates); give --calibration-data to fit one"
            )
        training = contract.label_training_rates
        current = dict(contract.label_base_rates or training)
        targets, source = requested_rates(
            labels, base_rates, current, "kept from the source's label_base_rates"
        )
        fit = reshift(contract.calibration, labels, training, targets)
        table = (info.get("calibration") or {}).get("table")
    else:
        options = DataOptions(train=data, label_columns=labels, text_column=text_column)
        val = load_split(options)[1]
        assert val.labels is not None
        logits, _ = predict(model, tokenizer, val.texts, logits=True)
        fitted_on = f"the validation split: {options.describe_validation()}"
        own = {
            label: round(float(np.clip((val.labels[:, j] >= 0.5).mean(), 1e-6, 1 - 1e-6)), 6)
            for j, label in enumerate(labels)
        }
        targets, source = requested_rates(
            labels,
            base_rates,
            own,
            f"from the calibration data ({len(val)} rows of {options.describe_validation()})",
        )
        fit = fit_calibration(
            logits,
            val.labels,
            labels,
            current=contract.calibration,
            base_rates=targets,
            fitted_on=fitted_on,
        )
        raw = raw_logits(logits, labels, contract.calibration)
        table = calibration_table(raw, val.labels, labels)
        extra["collapse"] = check_collapse(val.labels, sigmoid(logits), labels).as_dict()
    log.info("base rates %s: %s", source, _rates_line(fit))
    fold_affine_into_head(model, fit.scale, fit.offset)
    info["calibration"] = _calibration_record(fit, table=table, base_rates_from=source, **extra)
    return fit


def _rates_line(fit: CalibrationFit) -> str:
    """`label=rate (shift +x.xx logits)` per label."""
    return ", ".join(
        f"{label}={fit.base_rates[label]:.4g} (shift {entry.prior_shift:+.2f})"
        for label, entry in fit.calibration.labels.items()
    )


def _calibration_record(fit: CalibrationFit, **extra: Any) -> dict[str, Any]:
    """What `training_info.json` keeps of a calibration (the card's calibration section reads
    it), plus `extra`; logs the fitted parameters."""
    log.info(
        "calibration: %s",
        ", ".join(
            f"{label} a={e.slope:.3f} b={e.intercept:+.3f} shift={e.prior_shift:+.3f}"
            for label, e in fit.calibration.labels.items()
        ),
    )
    return {
        "method": fit.calibration.method,
        "fitted_on": fit.calibration.fitted_on,
        "rows": fit.calibration.rows,
        "label_training_rates": fit.training_rates,
        "label_base_rates": fit.base_rates,
        **extra,
    }


def match_reference(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contract: ArtifactContract,
    data: Path,
    reference_dir: Path,
    info: dict[str, Any],
    *,
    text_column: str = "comment_text",
) -> tuple[CalibrationFit, dict[str, float]]:
    """Calibrate `model` (trained on all rows of `data`) to reproduce the calibrated artifact in
    `reference_dir` (the same recipe trained on `data`'s training split and calibrated on its
    held-out rows), fitted on the texts of that training split, which both models learned from;
    fold it into the head. Returns the fit and the reference's thresholds (taken over: the
    probabilities mean the same). Records the fit, the reference and how closely the two
    agree on those texts in `info["calibration"]`."""
    from training.calibration import CalibrationError, match_calibration, sigmoid
    from training.data import DataOptions, load_split
    from training.modeling import fold_affine_into_head, load_classifier, load_tokenizer, predict

    reference = read_contract(resolve_model_dir(reference_dir))
    labels = list(contract.labels)
    if reference.calibration is None or reference.label_base_rates is None:
        raise CalibrationError(
            f"--calibration-from {reference_dir}: that artifact is not calibrated"
        )
    if sorted(reference.labels) != sorted(labels):
        raise CalibrationError(
            f"--calibration-from {reference_dir}: its labels {list(reference.labels)} are not "
            f"this model's {labels}"
        )
    training_rates = info.get("label_positive_rates")
    if not training_rates:
        raise CalibrationError(
            "the source's training_info.json does not record label_positive_rates (the label "
            "rates of its training rows), which the prior shift needs"
        )
    options = DataOptions(train=data, label_columns=labels, text_column=text_column)
    rows = load_split(options)[0]
    logits, _ = predict(model, tokenizer, rows.texts, logits=True)
    reference_model = load_classifier(resolve_model_dir(reference_dir))
    reference_raw, _ = predict(
        reference_model, load_tokenizer(resolve_model_dir(reference_dir)), rows.texts, logits=True
    )
    order = [list(reference.labels).index(label) for label in labels]
    reference_logits = reference_raw[:, order]
    described = f"{reference.model_name} {reference.model_version}"
    fit = match_calibration(
        logits,
        reference_logits,
        labels,
        current=contract.calibration,
        training_rates={label: float(training_rates[label]) for label in labels},
        base_rates=dict(reference.label_base_rates),
        fitted_on=(
            f"the texts of the training split ({options.describe_training()}) of {described}, "
            "to reproduce its probabilities"
        ),
        y=rows.labels,
    )
    log.info("base rates taken over from the reference %s: %s", described, _rates_line(fit))
    fold_affine_into_head(model, fit.scale, fit.offset)
    thresholds = {label: reference.label_thresholds[label] for label in labels}
    ours = sigmoid(fit.scale * np.asarray(logits, dtype=np.float64) + fit.offset)
    theirs = sigmoid(reference_logits)
    limits = np.array([thresholds[label] for label in labels])
    reference_info_file = resolve_model_dir(reference_dir) / INFO_FILE
    reference_info = (
        json.loads(reference_info_file.read_text()) if reference_info_file.is_file() else {}
    )
    info["calibration"] = _calibration_record(
        fit,
        reference={
            "model_name": reference.model_name,
            "model_version": reference.model_version,
            "fitted_on": reference.calibration.fitted_on,
            "rows": reference.calibration.rows,
        },
        agreement_with_reference={
            label: {
                "mean_abs_difference": round(float(np.abs(ours[:, j] - theirs[:, j]).mean()), 6),
                "flag_agreement": round(
                    float(((ours[:, j] >= limits[j]) == (theirs[:, j] >= limits[j])).mean()), 6
                ),
            }
            for j, label in enumerate(labels)
        },
        # the reference's cross-fitted ECE on its held-out rows: this model has none
        table=(reference_info.get("calibration") or {}).get("table"),
        base_rates_from=f"taken over from the reference {described}",
    )
    return fit, thresholds
