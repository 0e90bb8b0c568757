"""TF-IDF (word + char n-grams) + logistic regression: the baseline and an ensemble teacher."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.data import DataOptions, load_split

if TYPE_CHECKING:
    from sklearn.feature_extraction.text import TfidfVectorizer

log = logging.getLogger(__name__)


def _vectorizer(analyzer: str, ngram_range: tuple[int, int], max_features: int) -> TfidfVectorizer:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(
        analyzer=analyzer,
        ngram_range=ngram_range,
        sublinear_tf=True,
        min_df=2,
        max_features=max_features,
        strip_accents="unicode",
        lowercase=True,
    )


class TfidfLR:
    """One TF-IDF feature space (word 1-2 + char_wb 2-5 grams), one LR per label."""

    def __init__(self, c: float = 4.0, max_word: int = 50_000, max_char: int = 100_000) -> None:
        self.c = c
        self.max_word = max_word
        self.max_char = max_char

    def fit(self, texts: Sequence[str], labels: np.ndarray) -> TfidfLR:
        """Fit vectorisers and one classifier per label."""
        from scipy.sparse import hstack
        from sklearn.linear_model import LogisticRegression

        self.word = _vectorizer("word", (1, 2), self.max_word)
        self.char = _vectorizer("char_wb", (2, 5), self.max_char)
        x = hstack([self.word.fit_transform(texts), self.char.fit_transform(texts)]).tocsr()
        self.models: list[LogisticRegression | float] = []
        for j in range(labels.shape[1]):
            y = (labels[:, j] >= 0.5).astype(int)
            if y.min() == y.max():
                self.models.append(float(y[0]))
                continue
            self.models.append(LogisticRegression(C=self.c, solver="liblinear").fit(x, y))
        return self

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(n, n_labels) probabilities."""
        from scipy.sparse import hstack

        x = hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()
        out = np.zeros((x.shape[0], len(self.models)), dtype=np.float32)
        for j, model in enumerate(self.models):
            out[:, j] = model if isinstance(model, float) else model.predict_proba(x)[:, 1]
        return out


def out_of_fold_probs(
    texts: Sequence[str],
    labels: np.ndarray,
    transfer_texts: Sequence[str],
    transfer_source: np.ndarray,
    folds: int = 5,
    seed: int = 42,
) -> np.ndarray:
    """TF-IDF teacher probabilities without leakage.

    Each transfer text derived from training row `s` (`transfer_source[i] == s`) is scored by
    the fold model that did not see `s`; texts with source -1 get the mean of all fold models.
    """
    from sklearn.model_selection import KFold

    out = np.zeros((len(transfer_texts), labels.shape[1]), dtype=np.float32)
    fold_of = np.full(len(texts), -1)
    kfold = KFold(n_splits=folds, shuffle=True, random_state=seed)
    outside = np.flatnonzero(transfer_source < 0)
    for f, (fit_idx, held_idx) in enumerate(kfold.split(np.arange(len(texts)))):
        fold_of[held_idx] = f
        started = time.perf_counter()
        model = TfidfLR().fit([texts[i] for i in fit_idx], labels[fit_idx])
        rows = np.flatnonzero(np.isin(transfer_source, held_idx))
        if len(rows):
            out[rows] = model.predict_proba([transfer_texts[i] for i in rows])
        if len(outside):
            out[outside] += model.predict_proba([transfer_texts[i] for i in outside]) / folds
        log.info("tf-idf fold %d/%d in %.1fs", f + 1, folds, time.perf_counter() - started)
    return out


def run_baseline(data: DataOptions, output_dir: Path) -> dict[str, object]:
    """Train TF-IDF+LR on the training split, evaluate on validation, write the report
    (`metrics.json`, `report.md`, plots) and the validation probabilities (`val_probs.npy`)."""
    from training.evaluate import choose_thresholds, compute_metrics, write_report

    started = time.perf_counter()
    train, val = load_split(data)
    assert train.labels is not None and val.labels is not None
    model = TfidfLR().fit(train.texts, train.labels)
    probs = model.predict_proba(val.texts)
    thresholds = choose_thresholds(val.labels, probs, train.label_names)
    metrics = compute_metrics(val.labels, probs, train.label_names, thresholds)
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    write_report(
        metrics,
        val.labels,
        probs,
        train.label_names,
        output_dir,
        title="TF-IDF word+char n-grams + logistic regression (validation)",
    )
    np.save(output_dir / "val_probs.npy", probs)
    log.info("baseline: mean ROC-AUC %.4f, BCE %.4f", metrics["mean_roc_auc"], metrics["bce"])
    return metrics
