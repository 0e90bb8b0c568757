"""A collapsed model: one that gives every text (nearly) the same scores, or whose scores rank
the validation rows no better than chance. Such a model flags everything or nothing once its
thresholds are chosen, whatever the text; training says so and export refuses it unless forced.

The rule, on a labeled validation set (n rows):
- spread: per label, the standard deviation of the predicted probability across the n texts.
  Collapsed when the LARGEST spread over all labels is below `MIN_SPREAD` (0.01): every label
  gives every text the same score to within about a hundredth.
- ranking: the macro (unweighted mean over labels with both classes) ROC-AUC. Collapsed when it
  is below `MIN_MACRO_ROC_AUC` (0.6).

Either condition suffices: a near-constant model can still rank by its last digits (a collapsed
student measured 0.67), and varied scores that rank at chance are as useless. The cutoffs come
from measurements (docs in the owndata notes): collapsed runs (2,400 Jigsaw rows, a random-init
BERT-Tiny student distilled for 3 epochs, or fitted from config; the tests' 1-epoch tiny models)
had a largest spread of 0.00000 to 0.0003, and 0.005 for a weak mean-pooled one; working models
0.38 to 0.41. Random scores on 480 validation rows of that data give a macro ROC-AUC of
0.50 +- 0.035 (99th percentile 0.584), so below 0.6 a model is not distinguishable from chance
there; working models score 0.81 (a tiny test model) to 0.99.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.artifact import CollapseRecord

MIN_SPREAD = 0.01
MIN_MACRO_ROC_AUC = 0.6
WHAT_TO_TRY = (
    "try more epochs or a higher learning rate, or fine-tune a pretrained model instead "
    "(moderation-train fit --base-model worker/default_model, see training/README.md)"
)


@dataclass(frozen=True)
class CollapseCheck:
    """The figures the rule reads (see the module docstring), on `rows` validation texts."""

    rows: int
    spread: dict[str, float]  # per label: std of the probability across the texts
    macro_roc_auc: float | None  # None where no label has both classes in the rows

    @property
    def max_spread(self) -> float | None:
        return max(self.spread.values()) if self.spread else None

    @property
    def constant(self) -> bool:
        return self.max_spread is not None and self.max_spread < MIN_SPREAD

    @property
    def chance(self) -> bool:
        return self.macro_roc_auc is not None and self.macro_roc_auc < MIN_MACRO_ROC_AUC

    @property
    def collapsed(self) -> bool:
        return self.constant or self.chance

    def describe(self) -> str:
        """What was measured, in a few words (for a one-line message)."""
        parts = []
        if self.max_spread is not None:
            parts.append(
                f"its scores vary by at most {self.max_spread:.2g} (std) across {self.rows} "
                f"validation texts ({'below' if self.constant else 'above'} {MIN_SPREAD})"
            )
        if self.macro_roc_auc is not None:
            parts.append(
                f"macro ROC-AUC {self.macro_roc_auc:.3f} "
                f"({'below' if self.chance else 'above'} {MIN_MACRO_ROC_AUC})"
            )
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "spread": self.spread,
            "macro_roc_auc": self.macro_roc_auc,
            "collapsed": self.collapsed,
            "min_spread": MIN_SPREAD,
            "min_macro_roc_auc": MIN_MACRO_ROC_AUC,
        }

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> CollapseCheck:
        """A recorded check, re-judged with the current cutoffs."""
        auc = record.get("macro_roc_auc")
        spread = {str(k): float(v) for k, v in (record.get("spread") or {}).items()}
        return cls(int(record.get("rows") or 0), spread, None if auc is None else float(auc))


def check_collapse(y: np.ndarray, probs: np.ndarray, labels: Sequence[str]) -> CollapseCheck:
    """The rule's figures for probabilities `probs` (n, labels) against 0/1 labels `y`."""
    from sklearn.metrics import roc_auc_score

    yb = np.asarray(y) >= 0.5
    p = np.asarray(probs, dtype=np.float64)
    spread = {label: round(float(p[:, j].std()), 6) for j, label in enumerate(labels)}
    aucs = [
        float(roc_auc_score(yb[:, j], p[:, j]))
        for j in range(len(labels))
        if 0 < yb[:, j].sum() < len(yb)
    ]
    macro = round(float(np.mean(aucs)), 6) if aucs else None
    return CollapseCheck(len(p), spread, macro)


def collapse_record(check: CollapseCheck | None, where: str) -> CollapseRecord | None:
    """The artifact's record of a collapsed model (`config.json` `collapsed`), None where the
    check found none."""
    if check is None or not check.collapsed:
        return None
    return CollapseRecord(checked_on=where, detail=check.describe())


def collapse_message(check: CollapseCheck, model: str, where: str) -> str:
    """One line: what happened, and what to try."""
    return (
        f"{model} looks collapsed on {where}: {check.describe()}; it would give every text "
        f"about the same scores. {WHAT_TO_TRY[0].upper()}{WHAT_TO_TRY[1:]}"
    )
