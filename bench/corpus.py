"""The benchmark corpus: real comments (the Jigsaw CSV by default) repeated to N messages, so the
length distribution is the real one; and the labelled validation split for accuracy checks."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np

from training.data import TextDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO_ROOT.parent / "shared" / "data" / "jigsaw" / "train.csv.gz"
TEXT_COLUMNS = ("comment_text", "text")


class CorpusError(RuntimeError):
    """The corpus file is missing or has no text column."""


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise CorpusError(f"corpus {path} not found (give one with --corpus FILE.csv[.gz])")
    csv.field_size_limit(1 << 30)
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    fields = reader.fieldnames or []
    return fields, list(reader)


def _text_column(fields: list[str], path: Path) -> str:
    for name in TEXT_COLUMNS:
        if name in fields:
            return name
    raise CorpusError(f"corpus {path} has no column named one of {TEXT_COLUMNS}")


def load_texts(path: Path = DEFAULT_CORPUS) -> list[str]:
    """Every non-empty comment of the CSV, in file order."""
    fields, rows = _rows(path)
    column = _text_column(fields, path)
    texts = [row[column] for row in rows if row.get(column)]
    if not texts:
        raise CorpusError(f"corpus {path} has no comments")
    return texts


def repeat_to(texts: list[str], n: int) -> list[str]:
    """The texts cycled in order until there are `n` of them."""
    return [texts[i % len(texts)] for i in range(n)]


def validation_split(path: Path = DEFAULT_CORPUS, limit: int | None = None) -> TextDataset | None:
    """The labelled validation split, as `moderation-train` makes it (its first `limit` rows:
    the split is shuffled, so a random sample); None for a corpus without the label columns."""
    from training.data import DataError, DataOptions, load_split

    try:
        validation = load_split(DataOptions(train=path))[1]
    except DataError:
        return None
    if limit is not None and len(validation) > limit:
        return validation.subset(range(limit))
    return validation


def length_stats(lengths: list[int] | np.ndarray) -> dict[str, float]:
    values = np.asarray(lengths)
    return {
        "mean": round(float(values.mean()), 1),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }
