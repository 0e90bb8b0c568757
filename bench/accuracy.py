"""Precision levers, checked: model-only speed of fp32/bf16/int8 on real comments, the largest
score difference from fp32, and ROC-AUC on the validation split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import validation_split
from worker.config import Settings
from worker.model import ServedModel, load_from_settings

SCORE_TOLERANCE = 0.01  # max abs difference of a probability from fp32 that a mode may show
AUC_TOLERANCE = 0.002  # mean ROC-AUC drop from fp32 that a mode may show


def _score(model: ServedModel, texts: list[str], batch: int) -> tuple[np.ndarray, float]:
    model.score(texts[:batch])  # warm-up
    started = time.perf_counter()
    rows = [model.score(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return np.vstack(rows), len(texts) / (time.perf_counter() - started)


def _mean_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    aucs = [
        roc_auc_score(labels[:, j], scores[:, j])
        for j in range(labels.shape[1])
        if 0 < labels[:, j].sum() < len(labels)
    ]
    return float(np.mean(aucs)) if aucs else None


def compare_precisions(
    settings: Settings, texts: list[str], corpus: Path, modes: tuple[str, ...] = ("bf16", "int8")
) -> dict[str, Any]:
    validation = validation_split(corpus)
    variants: dict[str, Any] = {}
    reference: np.ndarray | None = None
    reference_val: np.ndarray | None = None
    for mode in ("fp32", *modes):
        model = load_from_settings(
            settings, backend="torch", precision=mode,
            device="cpu" if mode == "int8" else settings.device,
        )  # fmt: skip
        scores, rate = _score(model, texts, settings.max_batch_size)
        entry: dict[str, Any] = {"comments_per_s": rate}
        if reference is None:
            reference = scores
        else:
            entry["max_abs_diff"] = float(np.abs(scores - reference).max())
        if validation is not None:
            val_scores, _ = _score(model, validation[0], settings.max_batch_size)
            entry["mean_roc_auc"] = _mean_auc(validation[1], val_scores)
            if reference_val is None:
                reference_val = val_scores
        variants[mode] = entry
    base_auc = variants["fp32"].get("mean_roc_auc")
    for mode in modes:
        entry = variants[mode]
        within_scores = entry["max_abs_diff"] <= SCORE_TOLERANCE
        auc = entry.get("mean_roc_auc")
        entry["auc_drop"] = None if auc is None or base_auc is None else base_auc - auc
        entry["within_tolerance"] = within_scores and (
            entry["auc_drop"] is None or entry["auc_drop"] <= AUC_TOLERANCE
        )
    if validation is None:
        note = (
            f"Score agreement on {len(texts):,} comments only (max abs diff ≤ {SCORE_TOLERANCE}):"
            " the corpus has no labels for the ROC-AUC check."
        )
    else:
        note = (
            f"ROC-AUC on the validation split ({len(validation[0]):,} comments, "
            f"train_test_split(test_size=0.2, random_state=42)); tolerance: mean drop ≤ "
            f"{AUC_TOLERANCE}, max abs score diff ≤ {SCORE_TOLERANCE}."
        )
    return {"variants": variants, "note": note}
