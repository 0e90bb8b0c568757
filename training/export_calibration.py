"""The calibration steps of an export: fit a calibration on a labeled file's validation split,
re-shift one to other base rates, or match a calibrated reference artifact; each folds its
affine map into the model's head and records itself in the training info (the card's
calibration section reads it). The statistics are `training.calibration`'s."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from schemas.artifact import ArtifactContract, read_contract
from training.artifact_files import INFO_FILE, resolve_model_dir
from training.calibration import BaseRates, CalibrationFit

log = logging.getLogger(__name__)


def calibrate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contract: ArtifactContract,
    data: Path | None,
    base_rates: BaseRates,
    info: dict[str, Any],
) -> CalibrationFit:
    """Fit (on the validation split of `data`) or re-shift the calibration, fold it into
    `model`'s head, and record it with its cross-fitted ECE table in `info["calibration"]`."""
    from training.calibration import (
        CalibrationError,
        calibration_table,
        fit_calibration,
        raw_logits,
        reshift,
        resolve_base_rates,
    )
    from training.data import DataOptions, load_split
    from training.modeling import fold_affine_into_head, predict

    labels = list(contract.labels)
    if data is None:
        if contract.calibration is None or contract.label_training_rates is None:
            raise CalibrationError(
                "--base-rates without --calibration-data needs an already calibrated source "
                "(its label_training_rates); give --calibration-data to fit one"
            )
        training = contract.label_training_rates
        targets = resolve_base_rates(labels, training, base_rates, contract.label_base_rates)
        fit = reshift(contract.calibration, labels, training, targets)
        table = (info.get("calibration") or {}).get("table")
    else:
        options = DataOptions(train=data, label_columns=labels)
        val = load_split(options)[1]
        assert val.labels is not None
        logits, _ = predict(model, tokenizer, val.texts, logits=True)
        fitted_on = f"the validation split: {options.describe_validation()}"
        fit = fit_calibration(
            logits,
            val.labels,
            labels,
            current=contract.calibration,
            base_rates=base_rates,
            fitted_on=fitted_on,
        )
        raw = raw_logits(logits, labels, contract.calibration)
        table = calibration_table(raw, val.labels, labels)
    fold_affine_into_head(model, fit.scale, fit.offset)
    info["calibration"] = _calibration_record(fit, table=table)
    return fit


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
) -> tuple[CalibrationFit, dict[str, float]]:
    """Calibrate `model` (trained on all rows of `data`) to reproduce the calibrated artifact in
    `reference_dir` (the same recipe trained on `data`'s training split and calibrated on its
    held-out rows), fitted on the texts of that training split, which both models learned from;
    fold it into the head. Returns the fit and the reference's thresholds (taken over: the
    probabilities mean the same). Records the fit, the reference and how closely the two
    agree on those texts in `info["calibration"]`."""
    import numpy as np

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
    options = DataOptions(train=data, label_columns=labels)
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
    )
    return fit, thresholds
