"""`moderation-train calibrate`: re-fit a served model's calibration on moderator feedback.

For each label the feedback judges (or those named), Platt scaling is fitted on the uncalibrated
head's logits of the judged rows (a calibration already folded into the head is undone first),
and the label's base rate becomes the feedback's own rate (no prior shift: the probabilities are
fitted to the community that judged them). Labels the feedback does not judge keep their
calibration and rates. The map is folded into the classifier head as `export --calibration-data`
does (weights otherwise untouched), thresholds are mapped through it (no flag decision changes:
`thresholds` chooses new ones), and the artifact is written with a new version. The report gives
per label the served probabilities' ECE before and the cross-fitted ECE after (`training.
calibration.crossfit`), with the noise floor, and ROC-AUC (unchanged: the map is increasing).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from schemas.artifact import Calibration, LabelCalibration, read_contract
from training.artifact_files import INFO_FILE, resolve_model_dir
from training.calibration import (
    CROSSFIT_FOLDS,
    JIGSAW_BASE_RATES,
    CalibrationFit,
    crossfit,
    ece_floor,
    expected_calibration_error,
    fit_platt,
    raw_logits,
    sigmoid,
)
from training.feedback_data import FeedbackError, column, judged_labels, require_classes
from training.provenance import portable_path

log = logging.getLogger(__name__)

MIN_PER_CLASS = 30  # judged positives and negatives a label needs to be re-fitted
_EPS = 1e-6


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(y, p)), 6) if 0 < y.sum() < len(y) else None


def calibrate_on_feedback(
    model: Path,
    feedback: Path,
    output: Path,
    *,
    labels: Sequence[str] | None = None,
    min_per_class: int = MIN_PER_CLASS,
    max_length: int = 128,
    batch_size: int = 64,
    force: bool = False,
) -> dict[str, Any]:
    """Re-fit the calibration of the artifact `model` on the feedback CSV `feedback` and write
    the result to `output`; returns the report (per label: rows, rate, ECE before/after, floor,
    ROC-AUC) with the new version."""
    from training.artifact_writer import save_artifact
    from training.export_target import check_export_target, exported_from
    from training.feedback_data import load_feedback
    from training.modeling import fold_affine_into_head, load_classifier, load_tokenizer, predict

    if min_per_class < CROSSFIT_FOLDS:
        raise FeedbackError(f"--min-per-class must be at least {CROSSFIT_FOLDS} (the folds)")
    model_dir = resolve_model_dir(model)
    contract = read_contract(model_dir)
    check_export_target(model_dir, output, force=force)
    all_labels = list(contract.labels)
    data = load_feedback(feedback, all_labels)
    targets = list(labels) if labels else judged_labels(data)
    unknown = [label for label in targets if label not in all_labels]
    if unknown:
        raise FeedbackError(
            f"--labels: unknown label(s) {', '.join(unknown)}; the model's labels are "
            f"{', '.join(all_labels)}"
        )
    if not targets:
        raise FeedbackError(f"{feedback}: no label is judged in any row")
    counts = require_classes(data, targets, min_per_class, "calibrate")

    net = load_classifier(model_dir)
    tokenizer = load_tokenizer(model_dir)
    logits, _ = predict(
        net, tokenizer, data.texts, max_length=max_length, batch_size=batch_size, logits=True
    )
    raw = raw_logits(logits, all_labels, contract.calibration)
    info_file = model_dir / INFO_FILE
    info: dict[str, Any] = json.loads(info_file.read_text()) if info_file.is_file() else {}
    old_table = (info.get("calibration") or {}).get("table") or {}
    previous = info.get("label_positive_rates") or {}
    fallback = {  # an uncalibrated source: rates only documented (no shift), kept inside (0, 1)
        label: float(
            np.clip(previous.get(label, JIGSAW_BASE_RATES.get(label, 0.5)), _EPS, 1 - _EPS)
        )
        for label in all_labels
    }
    training_rates = dict(contract.label_training_rates or fallback)
    base_rates = dict(contract.label_base_rates or training_rates)

    entries: dict[str, LabelCalibration] = {}
    scale, offset = np.ones(len(all_labels)), np.zeros(len(all_labels))
    report: dict[str, dict[str, Any]] = {}
    table: dict[str, dict[str, Any]] = {}
    for j, label in enumerate(all_labels):
        current = contract.calibration.labels[label] if contract.calibration else None
        if label not in targets:
            entries[label] = current or LabelCalibration(
                slope=1.0, intercept=0.0, positives=0, fitted=False
            )
            if label in old_table:
                table[label] = old_table[label]
            continue
        rows, y = column(data, label)
        z = raw[rows, j]
        platt = fit_platt(z, y)
        if platt is None or platt.slope <= 0:
            raise FeedbackError(
                f"label {label}: the model's scores do not increase with the decisions on "
                f"{len(rows)} judged rows; nothing to calibrate (check the feedback's labels)"
            )
        rate = float(np.clip(y.mean(), _EPS, 1 - _EPS))
        entries[label] = LabelCalibration(
            slope=platt.slope,
            intercept=platt.intercept,
            prior_shift=0.0,
            positives=int(y.sum()),
            fitted=True,
        )
        training_rates[label] = base_rates[label] = round(rate, 6)
        old_slope = current.slope if current else 1.0
        old_offset = (current.intercept + current.prior_shift) if current else 0.0
        scale[j] = platt.slope / old_slope
        offset[j] = platt.intercept - scale[j] * old_offset
        served = sigmoid(logits[rows, j])
        after = crossfit(z, y)
        assert after is not None  # require_classes: >= CROSSFIT_FOLDS of each class
        row = {
            "judged": len(rows),
            "positives": counts[label].positives,
            "rate": round(rate, 6),
            "mean_score_before": round(float(served.mean()), 6),
            "mean_score_after": round(float(after.mean()), 6),
            "ece_before": round(expected_calibration_error(y, served), 6),
            "ece_after": round(expected_calibration_error(y, after), 6),
            "ece_floor": round(ece_floor(after), 6),
            "roc_auc": _auc(y, served),
        }
        report[label] = row
        table[label] = {
            k: row[k] for k in ("positives", "rate", "ece_before", "ece_after", "ece_floor")
        }

    fitted_on = (
        f"moderator feedback {feedback.name}, judged rows of {', '.join(targets)} "
        f"({len(data)} rows)"
        + (
            f"; other labels keep theirs ({contract.calibration.fitted_on})"
            if contract.calibration and len(targets) < len(all_labels)
            else ""
        )
    )
    calibration = Calibration(fitted_on=fitted_on, rows=len(data), labels=entries)
    fit = CalibrationFit(tuple(all_labels), calibration, base_rates, training_rates, scale, offset)
    fold_affine_into_head(net, scale, offset)
    thresholds = fit.map_thresholds(contract.label_thresholds)
    info["exported_from"] = exported_from(model_dir)
    info["calibration"] = {
        "method": "platt",
        "fitted_on": fitted_on,
        "rows": len(data),
        "label_training_rates": training_rates,
        "label_base_rates": base_rates,
        "table": table,
    }
    info["feedback_calibration"] = {
        "feedback": portable_path(feedback),
        "source_model": f"{contract.model_name} {contract.model_version}",
        "labels": report,
    }
    for label, entry in (info.get("metrics") or {}).get("labels", {}).items():
        if isinstance(entry, dict) and label in thresholds:
            entry["threshold"] = thresholds[label]
    from training.artifact_files import remove_artifact_files

    remove_artifact_files(output)
    written = save_artifact(
        net,
        tokenizer,
        output,
        thresholds=thresholds,
        info=info,
        model_name=contract.model_name,
        calibration=calibration,
        base_rates=base_rates,
        training_rates=training_rates,
    )
    for label, row in report.items():
        log.info(
            "%s: %d judged (rate %.3f): ECE %.4f -> %.4f (cross-fitted; floor %.4f), ROC-AUC %s",
            label, row["judged"], row["rate"], row["ece_before"], row["ece_after"],
            row["ece_floor"], row["roc_auc"],
        )  # fmt: skip
    return {
        "model_version": written.model_version,
        "source_version": contract.model_version,
        "worst_ece_after": max(row["ece_after"] for row in report.values()),
        "labels": report,
    }
