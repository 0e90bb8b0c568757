"""Metrics (BCE, ROC-AUC, PR-AUC, F1, ECE), threshold choice, and the evaluation report with
plots (precision-recall curves, reliability diagrams, training loss)."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from training.plots import label_panels, pyplot, save_figure

log = logging.getLogger(__name__)

_EPS = 1e-7

ThresholdRule = Literal["f1"] | float
"""Per-label thresholds: max F1 on validation, or one fixed value for every label."""
Metrics = dict[str, Any]
"""`compute_metrics`' result: `n`, `bce`, `mean_roc_auc`, `mean_pr_auc`, `mean_f1`, `labels`
(per label: positives, roc_auc, pr_auc, threshold, f1, bce, ece), plus what a caller adds."""


def bce(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy over all labels and rows (NaN labels, not judged, skipped)."""
    p = np.clip(p.astype(np.float64), _EPS, 1 - _EPS)
    y = y.astype(np.float64)
    judged = ~np.isnan(y)
    if not judged.any():
        return float("nan")
    y, p = y[judged], p[judged]
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def judged(y: np.ndarray, p: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """Label `j`'s 0/1 targets and probabilities on the rows that judged it (not NaN)."""
    keep = ~np.isnan(np.asarray(y[:, j], dtype=np.float64))
    return (y[keep, j] >= 0.5).astype(int), p[keep, j]


def _best_f1_threshold(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import precision_recall_curve

    if y.min() == y.max():
        return 0.5
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))
    return float(thresholds[best])


def choose_thresholds(
    y: np.ndarray,
    p: np.ndarray,
    labels: Sequence[str],
    rule: ThresholdRule = "f1",
    unjudged: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """Per-label thresholds on validation data: max F1 (`"f1"`) or a fixed value (e.g. 0.5).

    A label no validation row judges has nothing to choose on: it gets `unjudged[label]` (with
    `fit --init-from`, the starting model's threshold), else 0.5."""
    if rule != "f1":
        return dict.fromkeys(labels, float(rule))
    fallback = unjudged or {}
    return {
        label: round(_best_f1_threshold(*judged(y, p, j)), 6)
        if len(judged(y, p, j)[0])
        else float(fallback.get(label, 0.5))
        for j, label in enumerate(labels)
    }


def _nan_to_none(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def compute_metrics(
    y: np.ndarray,
    p: np.ndarray,
    labels: Sequence[str],
    thresholds: dict[str, float] | None = None,
) -> Metrics:
    """Mean BCE, per-label and mean ROC-AUC, PR-AUC (average precision), F1 at thresholds and
    expected calibration error (15 equal-mass bins)."""
    from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

    from training.calibration import expected_calibration_error

    thresholds = thresholds or {}
    per_label: dict[str, dict[str, float | int | None]] = {}
    for j, label in enumerate(labels):
        yj, pj = judged(y, p, j)
        threshold = float(thresholds.get(label, 0.5))
        both = 0 < yj.sum() < len(yj)
        per_label[label] = {
            "positives": int(yj.sum()),
            "roc_auc": _nan_to_none(roc_auc_score(yj, pj)) if both else None,
            "pr_auc": _nan_to_none(average_precision_score(yj, pj)) if yj.any() else None,
            "threshold": threshold,
            "f1": float(f1_score(yj, pj >= threshold, zero_division=0)) if len(yj) else None,
            "bce": bce(y[:, j], p[:, j]) if len(yj) else None,
            "ece": expected_calibration_error(yj, pj) if len(yj) else None,
        }
        if len(yj) < len(y):
            per_label[label]["judged"] = len(yj)

    def mean(key: str) -> float | None:
        values = [v[key] for v in per_label.values() if v[key] is not None]
        return float(np.mean(values)) if values else None

    return {
        "n": len(y),
        "bce": bce(y, p),
        "mean_roc_auc": mean("roc_auc"),
        "mean_pr_auc": mean("pr_auc"),
        "mean_f1": mean("f1"),
        "labels": per_label,
    }


def _plot_pr_curves(y: np.ndarray, p: np.ndarray, labels: Sequence[str], path: Path) -> None:
    from sklearn.metrics import precision_recall_curve

    with label_panels(labels, path, panel_height=3.4) as panels:
        for j, (label, ax) in enumerate(zip(labels, panels, strict=True)):
            yj, pj = judged(y, p, j)
            if yj.any():
                precision, recall, _ = precision_recall_curve(yj, pj)
                ax.plot(recall, precision)
            ax.set_title(label)
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)


def _plot_loss(history: list[dict[str, float]], path: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean over 50 steps)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def format_metric(value: object, digits: int = 4) -> str:
    """A metric for reports and cards: fixed digits, or `n/a` where it is undefined."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def write_report(
    metrics: Metrics,
    y: np.ndarray,
    p: np.ndarray,
    labels: Sequence[str],
    out_dir: Path,
    *,
    title: str = "Evaluation",
    history: list[dict[str, float]] | None = None,
    reliability: dict[str, np.ndarray] | None = None,
) -> list[Path]:
    """Write metrics.json, report.md, pr_curves.png, (with a history) training_loss.png and
    (with `reliability` curves, name -> probabilities) reliability.png; the calibration table
    in `metrics["calibration"]`, if any, goes into the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "metrics.json", out_dir / "report.md", out_dir / "pr_curves.png"]
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    _plot_pr_curves(y, p, labels, out_dir / "pr_curves.png")
    lines = [
        f"# {title}",
        "",
        f"- rows: {metrics['n']}",
        f"- mean BCE: {format_metric(metrics['bce'])}",
        f"- mean ROC-AUC: {format_metric(metrics['mean_roc_auc'])}",
        f"- mean PR-AUC: {format_metric(metrics['mean_pr_auc'])}",
        f"- mean F1 at thresholds: {format_metric(metrics['mean_f1'])}",
        *([f"- **warning**: {metrics['warning']}"] if metrics.get("warning") else []),
        "",
        "| label | positives | ROC-AUC | PR-AUC | threshold | F1 | BCE | ECE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, m in metrics["labels"].items():
        lines.append(
            f"| {label} | {m['positives']} | {format_metric(m['roc_auc'])} "
            f"| {format_metric(m['pr_auc'])} | {m['threshold']:.3f} | {format_metric(m['f1'])} "
            f"| {format_metric(m['bce'])} | {format_metric(m.get('ece'))} |"
        )
    if metrics.get("label_base_rates"):
        lines += [
            "",
            "The model's probabilities assume its `label_base_rates` (prior correction), not "
            "these rows' rates: the ECE column above measures them as served; the calibration "
            "section's 'ECE served' moves them to these rows' rates first.",
        ]
    lines += ["", "![precision-recall curves](pr_curves.png)", ""]
    if metrics.get("calibration"):
        lines += _calibration_lines(metrics["calibration"])
    if reliability:
        from training.calibration import plot_reliability

        plot_reliability(y, reliability, labels, out_dir / "reliability.png")
        written.append(out_dir / "reliability.png")
        lines += ["![reliability diagrams](reliability.png)", ""]
    if history:
        _plot_loss(history, out_dir / "training_loss.png")
        written.append(out_dir / "training_loss.png")
        lines += ["![training loss](training_loss.png)", ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    return written


def _calibration_lines(calibration: dict[str, Any]) -> list[str]:
    """The report's calibration section (`evaluate_model`'s `metrics["calibration"]`)."""
    table: dict[str, dict[str, Any]] = calibration["table"]
    served = "ece_at_data_rates" in next(iter(table.values()), {})
    lines = [
        "## Calibration",
        "",
        "Expected calibration error (ECE), 15 equal-mass bins. before: the uncalibrated head's "
        "probabilities; after: Platt scaling per label, 5-fold cross-fitted on these rows (fitted "
        "on 4 folds, measured on the 5th, shifted from the fitting folds' label rate to the "
        "held-out rows' own); isotonic: the same with isotonic regression (measured, not "
        "shipped); floor: the ECE a perfectly calibrated model with the after-probabilities "
        "would show on as many rows (sampling noise). BCE: mean binary cross-entropy."
        + (
            " served: the artifact's probabilities moved from its label_base_rates to these "
            "rows' own rates (in-sample where these are its calibration rows)."
            if served
            else ""
        ),
        "",
        "| label | rate | ECE before | ECE after | ECE isotonic | floor | BCE before | BCE after "
        "| BCE isotonic |" + (" ECE served |" if served else ""),
        "|---|---|---|---|---|---|---|---|---|" + ("---|" if served else ""),
    ]
    for label, row in table.items():
        lines.append(
            f"| {label} | {row['rate']:.4f} | {format_metric(row['ece_before'])} "
            f"| {format_metric(row['ece_after'])} | {format_metric(row['ece_isotonic'])} "
            f"| {format_metric(row['ece_floor'])} | {format_metric(row['bce_before'])} "
            f"| {format_metric(row['bce_after'])} | {format_metric(row['bce_isotonic'])} |"
            + (f" {format_metric(row.get('ece_at_data_rates'))} |" if served else "")
        )
    return [*lines, ""]


def find_history(model_dir: Path) -> list[dict[str, float]] | None:
    """The training loss history stored next to (or inside) an artifact, if any."""
    for candidate in (model_dir / "history.json", model_dir.parent / "history.json"):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    return None


def evaluate_model(
    model: Path,
    data_path: Path,
    out_dir: Path,
    *,
    text_column: str = "comment_text",
    label_columns: Sequence[str] | None = None,
    max_length: int = 128,
    batch_size: int = 64,
    skip_bad_rows: bool = False,
    history_path: Path | None = None,
) -> Metrics:
    """Score a labeled file with an exported artifact (or a run directory's) at its stored
    thresholds and write the report (`write_report`) into `out_dir`; `label_columns` default to
    the model's labels. The report's calibration section fits Platt scaling on these rows,
    cross-fitted (`training.calibration.calibration_table`); the artifact is not changed
    (`export --calibration-data` stores a calibration)."""
    from schemas.artifact import read_contract
    from training.artifact_files import INFO_FILE, resolve_model_dir
    from training.calibration import (
        calibration_table,
        crossfitted_probabilities,
        expected_calibration_error,
        logit,
        raw_logits,
        sigmoid,
    )
    from training.collapse import CollapseCheck, check_collapse, collapse_message
    from training.data import load_dataset
    from training.modeling import load_classifier, load_tokenizer, predict
    from training.provenance import is_recorded_source, portable_path

    model_dir = resolve_model_dir(model)
    contract = read_contract(model_dir)
    labels = list(contract.labels)
    dataset = load_dataset(
        data_path, text_column, label_columns or labels, skip_bad_rows=skip_bad_rows
    )
    logits, _ = predict(
        load_classifier(model_dir),
        load_tokenizer(model_dir),
        dataset.texts,
        max_length=max_length,
        batch_size=batch_size,
        logits=True,
    )
    probs = sigmoid(logits).astype(np.float32)
    assert dataset.labels is not None
    y = dataset.labels
    metrics = compute_metrics(y, probs, labels, contract.label_thresholds)
    raw = raw_logits(logits, labels, contract.calibration)
    table = calibration_table(raw, y, labels)
    reliability = {
        "before (raw)": sigmoid(raw),
        "after (Platt, cross-fitted)": crossfitted_probabilities(raw, y),
    }
    if contract.label_base_rates is not None:  # served probabilities, at these rows' rates
        rates = np.clip((y >= 0.5).mean(axis=0), 1e-6, 1 - 1e-6)
        base = np.array([contract.label_base_rates[label] for label in labels])
        served = sigmoid(logits + logit(rates) - logit(base))
        reliability["served, at these rows' rates"] = served
        for j, label in enumerate(labels):
            ece = expected_calibration_error(y[:, j] >= 0.5, served[:, j])
            table[label]["ece_at_data_rates"] = round(ece, 6)
    metrics["calibration"] = {"table": table, "bins": 15, "folds": 5}
    if contract.label_base_rates is not None:
        metrics["label_base_rates"] = dict(contract.label_base_rates)
    metrics["model"] = portable_path(model_dir)
    metrics["data"] = portable_path(data_path)
    metrics["skipped_rows"] = dataset.skipped_rows
    metrics["collapse"] = check_collapse(y, probs, labels).as_dict()
    info_file = model_dir / INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    if is_recorded_source(info.get("train_data"), data_path):
        metrics["warning"] = (
            f"{data_path} is the file {model_dir} was trained on (train_data in its "
            f"{INFO_FILE}: {info['train_data']}): these rows include its training rows, so "
            "the figures are optimistic; evaluate on rows it has not seen"
        )
        log.warning("%s", metrics["warning"])
    history = json.loads(history_path.read_text()) if history_path else find_history(model_dir)
    write_report(
        metrics,
        dataset.labels,
        probs,
        labels,
        out_dir,
        title=f"Evaluation of {model_dir.name} on {data_path.name}",
        history=history,
        reliability=reliability,
    )
    log.info("mean ROC-AUC %s, BCE %.4f", format_metric(metrics["mean_roc_auc"]), metrics["bce"])
    check = CollapseCheck.from_dict(metrics["collapse"])
    if check.collapsed:
        log.warning("%s", collapse_message(check, str(model_dir), str(data_path)))
    return metrics
