"""Read labeled and unlabeled text files (Jigsaw CSV, generic CSV or JSONL) and split them."""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training import JIGSAW_LABELS
from training.provenance import portable_path

log = logging.getLogger(__name__)

DEFAULT_TEXT_COLUMN = "comment_text"


class DataError(ValueError):
    """A data file or one of its rows cannot be used; the message names the file and row."""


@dataclass
class TextDataset:
    """Texts with optional multi-label targets (float32, shape (n, len(label_names)))."""

    texts: list[str]
    labels: np.ndarray | None
    label_names: list[str]
    ids: list[str] = field(default_factory=list)
    skipped_rows: int = 0  # bad rows left out when the file was read (`skip_bad_rows`)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int] | np.ndarray, *, skipped_rows: int = 0) -> TextDataset:
        """Rows at `index`, in that order; `skipped_rows` is the subset's share of the bad rows
        (a split gives them all to one part, so that they are counted once)."""
        idx = np.asarray(index, dtype=np.int64)
        return TextDataset(
            texts=[self.texts[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            label_names=list(self.label_names),
            ids=[self.ids[i] for i in idx] if self.ids else [],
            skipped_rows=skipped_rows,
        )


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last == ".csv":
        return "csv"
    if last in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if last in (".txt", ".text"):
        return "txt"
    raise DataError(f"{path}: unsupported file type (use .csv, .jsonl or .txt, optionally .gz)")


def _parse_label(value: object, column: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ValueError(f"label {column!r} is {value!r}, not a number") from None
    else:
        raise ValueError(f"label {column!r} is {value!r}, not a number")
    if math.isnan(number):
        raise ValueError(f"label {column!r} is {value!r}, not a number")
    if not 0.0 <= number <= 1.0:
        shown = value.strip() if isinstance(value, str) else value
        raise ValueError(f"label {column!r} is {shown}, outside [0, 1]")
    return number


def _csv_records(path: Path) -> Iterator[tuple[int, dict[str, str] | str]]:
    """(row number, record or error message); row 1 is the first data row after the header."""
    csv.field_size_limit(sys.maxsize)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a CSV header") from None
        except (csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: unreadable CSV header: {exc}") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        row_number = 0
        while True:
            row_number += 1
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError) as exc:
                yield row_number, f"malformed CSV ({exc})"
                continue
            if not row:
                row_number -= 1  # blank line, not a record
                continue
            if len(row) != len(header):
                yield row_number, f"has {len(row)} fields, the header has {len(header)}"
                continue
            yield row_number, dict(zip(header, row, strict=True))


def _jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, object] | str]]:
    with _open_text(path) as handle:
        row_number = 0
        while True:
            try:
                line = handle.readline()
            except UnicodeDecodeError as exc:
                row_number += 1
                yield row_number, f"not UTF-8 ({exc})"
                return
            if not line:
                return
            if not line.strip():
                continue
            row_number += 1
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield row_number, f"invalid JSON ({exc.msg})"
                continue
            if not isinstance(record, dict):
                yield row_number, "is not a JSON object"
                continue
            yield row_number, record


def _txt_records(path: Path) -> Iterator[tuple[int, dict[str, object] | str]]:
    with _open_text(path) as handle:
        for row_number, line in enumerate(handle, start=1):
            yield row_number, {DEFAULT_TEXT_COLUMN: line.rstrip("\r\n")}


def load_dataset(
    path: str | Path,
    text_column: str = DEFAULT_TEXT_COLUMN,
    label_columns: Sequence[str] | None = None,
    *,
    require_labels: bool = True,
    skip_bad_rows: bool = False,
    allow_missing_labels: bool = False,
) -> TextDataset:
    """Read a Jigsaw-format or generic CSV/JSONL file (optionally gzipped).

    `label_columns` defaults to the six Jigsaw labels. With `require_labels=False` only the text
    column is read (unlabeled text; `.txt` files hold one text per line). A bad row raises
    `DataError` naming the file and row, unless `skip_bad_rows` is set: then it is counted in
    `skipped_rows`. With `allow_missing_labels`, an empty label cell (or a JSON null) means "not
    judged" and reads as NaN (moderator feedback: `training.feedback_data`); a row with no label
    judged at all is a bad row.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    fmt = _file_format(path)
    labels = list(label_columns) if label_columns else list(JIGSAW_LABELS)
    if fmt == "txt" and require_labels:
        raise DataError(f"{path}: a .txt file holds unlabeled text only")
    records = {"csv": _csv_records, "jsonl": _jsonl_records, "txt": _txt_records}[fmt](path)

    texts: list[str] = []
    targets: list[list[float]] = []
    ids: list[str] = []
    skipped = 0
    columns_checked = False
    for row_number, record in records:
        if fmt == "csv" and not columns_checked and isinstance(record, dict):
            wanted = [text_column, *(labels if require_labels else [])]
            missing = [c for c in wanted if c not in record]
            if missing:
                raise DataError(
                    f"{path}: missing column(s) {', '.join(missing)}; "
                    f"header has {', '.join(record)}"
                )
            columns_checked = True
        try:
            if isinstance(record, str):
                raise ValueError(record)
            text = record.get(text_column)
            if not isinstance(text, str):
                raise ValueError(f"no text in column {text_column!r}")
            if not text.strip():
                raise ValueError(f"empty text in column {text_column!r}")
            row_labels: list[float] = []
            if require_labels:
                for column in labels:
                    if column not in record:
                        raise ValueError(f"no label column {column!r}")
                    value = record[column]
                    if allow_missing_labels and (value is None or str(value).strip() == ""):
                        row_labels.append(math.nan)
                    else:
                        row_labels.append(_parse_label(value, column))
                if allow_missing_labels and all(math.isnan(v) for v in row_labels):
                    raise ValueError("no label judged")
        except ValueError as exc:
            if skip_bad_rows:
                skipped += 1
                continue
            raise DataError(f"{path}: row {row_number}: {exc}") from None
        texts.append(text)
        if require_labels:
            targets.append(row_labels)
        row_id = record.get("id")
        ids.append(str(row_id) if row_id is not None else str(row_number))
    if not texts:
        raise DataError(f"{path}: no usable rows" + (f" ({skipped} skipped)" if skipped else ""))
    return TextDataset(
        texts=texts,
        labels=np.asarray(targets, dtype=np.float32) if require_labels else None,
        label_names=labels,
        ids=ids,
        skipped_rows=skipped,
    )


def split_dataset(
    dataset: TextDataset, test_size: float = 0.2, random_state: int = 42
) -> tuple[TextDataset, TextDataset]:
    """Train/validation split as in the original write-up (sklearn `train_test_split`); the
    training part carries the file's count of skipped rows."""
    from sklearn.model_selection import train_test_split

    train_idx, val_idx = train_test_split(
        np.arange(len(dataset)), test_size=test_size, random_state=random_state
    )
    return dataset.subset(train_idx, skipped_rows=dataset.skipped_rows), dataset.subset(val_idx)


@dataclass
class DataOptions:
    """Where the labeled data comes from and how validation is held out."""

    train: Path
    val: Path | None = None
    text_column: str = DEFAULT_TEXT_COLUMN
    label_columns: Sequence[str] | None = None  # None: the six Jigsaw labels
    skip_bad_rows: bool = False
    allow_missing_labels: bool = False  # empty label cells: not judged (NaN, masked)
    test_size: float = 0.2  # without `val`: this share of `train`, split with `split_seed`
    split_seed: int = 42

    def describe_validation(self) -> str:
        """Where the validation rows come from, for the model card."""
        if self.val:
            return portable_path(self.val)
        return (
            f"{int(self.test_size * 100)}% split of {self.train.name} "
            f"(random_state={self.split_seed})"
        )

    def describe_training(self) -> str:
        """Where the training rows come from, for the model card."""
        if self.val:
            return portable_path(self.train)
        return (
            f"{100 - int(self.test_size * 100)}% split of {self.train.name} "
            f"(random_state={self.split_seed})"
        )


def skipped_total(*parts: TextDataset) -> int:
    """Bad rows skipped in reading the files behind `parts` (each counted once)."""
    return sum(part.skipped_rows for part in parts)


def load_split(opts: DataOptions) -> tuple[TextDataset, TextDataset]:
    """Training and validation sets: the validation file, or a split of the training file.
    Rows skipped as bad are counted in `skipped_rows` (`skipped_total` adds the two up)."""
    read = {"skip_bad_rows": opts.skip_bad_rows, "allow_missing_labels": opts.allow_missing_labels}
    train = load_dataset(opts.train, opts.text_column, opts.label_columns, **read)
    if opts.val is not None:
        val = load_dataset(opts.val, opts.text_column, opts.label_columns, **read)
    else:
        train, val = split_dataset(train, test_size=opts.test_size, random_state=opts.split_seed)
    skipped = skipped_total(train, val)
    if skipped:
        log.warning("skipped %d bad rows", skipped)
    log.info("data: %d train rows, %d validation rows", len(train), len(val))
    return train, val
