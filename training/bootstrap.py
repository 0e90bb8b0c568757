"""Paired bootstrap of the gain in mean ROC-AUC of one model over another on the same rows."""

from __future__ import annotations

import numpy as np


def bootstrap_gain(
    y: np.ndarray, probs: np.ndarray, baseline_probs: np.ndarray, rounds: int = 500
) -> dict[str, float]:
    """Paired bootstrap over the rows of (model - baseline) mean ROC-AUC, from the labels `y`
    and both models' probabilities (rows x labels): the observed gain, a 95% interval and the
    share of resamples where the gain is <= 0. A resample's mean is over the labels with both
    classes in it; the draws are seeded (0), so the figures are reproducible."""
    from sklearn.metrics import roc_auc_score

    a, b = probs, baseline_probs

    def gain(rows: np.ndarray) -> float:
        cols = [j for j in range(y.shape[1]) if 0 < y[rows, j].sum() < len(rows)]
        return float(
            np.mean([roc_auc_score(y[rows, j], a[rows, j]) for j in cols])
            - np.mean([roc_auc_score(y[rows, j], b[rows, j]) for j in cols])
        )

    rng = np.random.default_rng(0)
    draws = np.array([gain(rng.integers(0, len(y), len(y))) for _ in range(rounds)])
    low, high = np.percentile(draws, [2.5, 97.5])
    return {
        "gain": round(gain(np.arange(len(y))), 4),
        "ci95_low": round(float(low), 4),
        "ci95_high": round(float(high), 4),
        "p_gain_le_0": round(float((draws <= 0).mean()), 4),
        "resamples": rounds,
    }
