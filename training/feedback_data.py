"""Read moderator feedback (the CSV `feedback-export` writes) for `calibrate`, `thresholds` and
`fit`: `id`, `comment_text` and label columns, an empty cell meaning "not judged".

Every check here fails with `FeedbackError` (one line, exit 2 on the command line): a missing
text column, a label column the model does not have, no label judged at all, a label with too few
judged positives or negatives for what is asked of it.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import DEFAULT_TEXT_COLUMN, DataError, TextDataset, load_dataset

ID_COLUMN = "id"


class FeedbackError(DataError):
    """Feedback that cannot be used as asked; the message is one line."""


@dataclass(frozen=True)
class LabelCounts:
    """Judged rows of one label: positives and negatives."""

    positives: int
    negatives: int

    @property
    def judged(self) -> int:
        return self.positives + self.negatives


def _header(path: Path) -> list[str]:
    if not path.is_file():
        raise FeedbackError(f"{path}: no such file")
    if not path.name.lower().endswith((".csv", ".csv.gz")):
        raise FeedbackError(
            f"{path}: feedback is a CSV file (.csv or .csv.gz), as feedback-export writes"
        )
    try:
        with (
            gzip.open(path, "rt", encoding="utf-8", newline="")
            if path.suffix == ".gz"
            else path.open(encoding="utf-8", newline="")
        ) as handle:
            header = next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise FeedbackError(f"{path}: unreadable CSV header: {exc}") from None
    if not header:
        raise FeedbackError(f"{path}: empty file, expected a CSV header")
    return [h.strip().lstrip("\ufeff") for h in header]


def load_feedback(
    path: Path, model_labels: Sequence[str], text_column: str = DEFAULT_TEXT_COLUMN
) -> TextDataset:
    """The feedback rows: texts, and labels (n, k) over the file's label columns (a subset of
    `model_labels`, in the file's order) with NaN where a label was not judged."""
    header = _header(path)
    if text_column not in header:
        raise FeedbackError(
            f"{path}: missing column {text_column}; header has {', '.join(header) or 'nothing'}"
        )
    columns = [c for c in header if c not in (ID_COLUMN, text_column)]
    if not columns:
        raise FeedbackError(
            f"{path}: no label columns (expected some of {', '.join(model_labels)})"
        )
    unknown = [c for c in columns if c not in model_labels]
    if unknown:
        raise FeedbackError(
            f"{path}: unknown label column(s) {', '.join(unknown)}; the model's labels are "
            f"{', '.join(model_labels)}"
        )
    try:
        data = load_dataset(path, text_column, columns, allow_missing_labels=True)
    except FeedbackError:
        raise
    except DataError as exc:
        raise FeedbackError(str(exc)) from None
    return data


def label_counts(data: TextDataset) -> dict[str, LabelCounts]:
    """Judged positives and negatives per label of `data`."""
    assert data.labels is not None
    out: dict[str, LabelCounts] = {}
    for j, label in enumerate(data.label_names):
        column = data.labels[:, j]
        judged = column[~np.isnan(column)]
        positives = int((judged >= 0.5).sum())
        out[label] = LabelCounts(positives, int(len(judged) - positives))
    return out


def judged_labels(data: TextDataset) -> list[str]:
    """The labels with at least one judged row."""
    return [label for label, c in label_counts(data).items() if c.judged]


def require_classes(
    data: TextDataset, labels: Sequence[str], minimum: int, purpose: str
) -> dict[str, LabelCounts]:
    """`FeedbackError` unless each of `labels` has at least `minimum` judged positives and as
    many judged negatives (the first label short of them named, with what it has and needs)."""
    counts = label_counts(data)
    for label in labels:
        c = counts.get(label)
        if c is None or c.judged == 0:
            raise FeedbackError(
                f"label {label}: no judged rows in the feedback; to {purpose} it needs at least "
                f"{minimum} judged positives and {minimum} negatives"
            )
        if c.positives < minimum or c.negatives < minimum:
            raise FeedbackError(
                f"label {label}: {c.positives} judged positives and {c.negatives} negatives; "
                f"to {purpose} it needs at least {minimum} of each"
            )
    return counts


def column(data: TextDataset, label: str) -> tuple[np.ndarray, np.ndarray]:
    """(row indices judged on `label`, their 0/1 labels)."""
    assert data.labels is not None
    values = data.labels[:, data.label_names.index(label)]
    rows = np.flatnonzero(~np.isnan(values))
    return rows, (values[rows] >= 0.5).astype(np.int64)
