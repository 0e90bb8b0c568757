"""Scores from the stock `transformers` text-classification pipeline: what a user of an
artifact gets without any of our code, to hold the worker's scores against."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pipeline_scores(model_dir: Path, texts: Sequence[str], max_length: int = 128) -> np.ndarray:
    """(len(texts), labels) sigmoid probabilities, columns in the artifact's label order
    (`id2label`), texts truncated at `max_length` tokens. AssertionError if the pipeline
    answers other labels than the artifact names."""
    from transformers import pipeline

    config = json.loads((model_dir / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(len(config["id2label"]))]
    classify = pipeline(
        "text-classification",
        model=str(model_dir),
        top_k=None,
        function_to_apply="sigmoid",
        truncation=True,
        max_length=max_length,
    )
    rows = []
    for result in classify(list(texts)):
        by_label = {entry["label"]: entry["score"] for entry in result}
        assert set(by_label) == set(labels), f"the pipeline answers {sorted(by_label)}"
        rows.append([by_label[label] for label in labels])
    return np.array(rows)
