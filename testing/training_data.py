"""Tiny labeled data and a tiny random BERT for the training CLI's tests: rows that a model can
learn in a few epochs (half toxic, every label sometimes), written as a Jigsaw-format CSV, and a
model directory built from a config (no weights) with the bundled model's real tokenizer."""

from __future__ import annotations

import csv
import gzip
import shutil
from pathlib import Path

import numpy as np
from transformers import BertConfig

from testing.models import DEFAULT_MODEL_DIR
from training import JIGSAW_LABELS

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
)
TEXTS_TOXIC = ["you are a stupid idiot", "i will kill you", "shut up you fat moron", "go die loser"]
TEXTS_CLEAN = ["thanks for the edit", "see the talk page", "i added a citation", "nice article"]


def tiny_rows(n: int) -> list[dict[str, str]]:
    """`n` rows, even ones toxic (toxic always, the other labels at different rates), odd ones
    clean; the same rows for the same `n`."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        toxic = i % 2 == 0
        pool = TEXTS_TOXIC if toxic else TEXTS_CLEAN
        text = " ".join(pool[int(j)] for j in rng.integers(0, 4, size=2)) + f" {i}"
        row = {"id": f"{i:016x}", "comment_text": text}
        for j, label in enumerate(JIGSAW_LABELS):
            row[label] = "1" if toxic and (j == 0 or i % (j + 3) == 0) else "0"
        rows.append(row)
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    """Jigsaw-format CSV (gzip when the name ends in .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "comment_text", *JIGSAW_LABELS])
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_bert_dir(path: Path) -> Path:
    """A tiny random BERT config and the real BERT-Tiny tokenizer at `path` (no weights: the
    training CLI builds the model from the config)."""
    path.mkdir()
    BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    ).save_pretrained(path)
    for name in TOKENIZER_FILES:
        shutil.copyfile(DEFAULT_MODEL_DIR / name, path / name)
    return path
