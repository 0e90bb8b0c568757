"""bench/coral_thresholds.py: Coral's rule (flag when score > threshold), its counts and the
base-rate reweighting, and that the scores it reads are the model's (Coral's request, the API's
response)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.coral_thresholds import coral_scores, table
from worker.backends.model import load_served_model


def test_table_uses_corals_strict_rule_and_counts() -> None:
    scores = np.array([0.9, 0.8, 0.5, 0.2, np.nan, 0.85])
    truth = np.array([True, True, False, True, True, False])
    [row] = table(scores, truth, [0.8], None)
    # 0.8 is not flagged at 0.8 (Coral: score > threshold); a refused row (NaN) is never flagged
    assert (row["flagged"], row["tp"], row["fp"], row["fn"]) == (2, 1, 1, 3)
    assert (row["precision"], row["recall"]) == (0.5, 0.25)
    assert row["precision_at_base_rate"] == 0.5  # no base rate: unweighted


def test_precision_at_a_lower_base_rate_is_lower() -> None:
    truth = np.array([True] * 50 + [False] * 50)
    scores = np.where(truth, 0.9, 0.0)
    scores[50:60] = 0.9  # 10 false positives, 50 true
    [row] = table(scores, truth, [0.5], base_rate=0.1)
    assert row["precision"] == pytest.approx(50 / 60, abs=1e-3)
    # positives weigh 0.1/0.5, negatives 0.9/0.5: 10 / (10 + 18)
    assert row["precision_at_base_rate"] == pytest.approx(10 / 28, abs=1e-3)


def test_the_scores_are_the_models(tiny_model_dir: Path) -> None:
    served = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    texts = ["You are a complete idiot.", "Thanks for the edit!", "x" * 30_000]
    scores = coral_scores(served, texts, "INSULT", batch=2)
    row = served.score(texts[:2])
    column = served.contract.labels.index(served.contract.api_attributes["INSULT"])
    assert scores[:2] == pytest.approx(row[:, column], abs=1e-6)
    assert np.isnan(scores[2])  # over the API's 20 KB: refused, so Coral reads no score
