"""The accuracy rule for reduced precision (int8, bf16, ...): what users feel, not max |Δ|.

A reduced-precision variant passes when, against the fp32 reference on labeled validation data,
the mean ROC-AUC drops by at most `MAX_AUC_DROP` AND, for every label, at least
`MIN_FLAG_AGREEMENT` of the comments get the same flag decision at the artifact's thresholds.
The largest score difference is reported, not gated on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MAX_AUC_DROP = 0.002
MIN_FLAG_AGREEMENT = 0.995


def mean_roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mean ROC-AUC over the labels that have both classes in `labels`."""
    from sklearn.metrics import roc_auc_score

    aucs = [
        roc_auc_score(labels[:, j], scores[:, j])
        for j in range(labels.shape[1])
        if 0 < labels[:, j].sum() < len(labels)
    ]
    if not aucs:
        raise ValueError("no label has both classes in the check data")
    return float(np.mean(aucs))


@dataclass(frozen=True)
class PrecisionCheck:
    mean_roc_auc_reference: float
    mean_roc_auc: float
    auc_drop: float
    flag_agreement: dict[str, float]  # per label, share of identical flag decisions
    max_abs_diff: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"rule": f"AUC drop <= {MAX_AUC_DROP}, flags >= {MIN_FLAG_AGREEMENT}"}


def check_precision(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    label_names: Sequence[str],
    thresholds: Mapping[str, float],
) -> PrecisionCheck:
    """`reference` and `candidate`: (n, labels) probabilities of the same comments."""
    base, auc = mean_roc_auc(labels, reference), mean_roc_auc(labels, candidate)
    cut = np.array([thresholds[name] for name in label_names], dtype=np.float32)
    same = (reference >= cut) == (candidate >= cut)
    agreement = {name: float(same[:, j].mean()) for j, name in enumerate(label_names)}
    return PrecisionCheck(
        mean_roc_auc_reference=base,
        mean_roc_auc=auc,
        auc_drop=base - auc,
        flag_agreement=agreement,
        max_abs_diff=float(np.abs(candidate - reference).max()),
        passed=base - auc <= MAX_AUC_DROP and min(agreement.values()) >= MIN_FLAG_AGREEMENT,
    )
