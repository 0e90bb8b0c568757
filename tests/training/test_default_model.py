"""The committed default model: contract keys, size, stock pipeline == worker loader, sanity."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from transformers import pipeline

from training import JIGSAW_LABELS

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MODEL_DIR = Path(__file__).resolve().parents[2] / "worker" / "default_model"
TEXTS = [
    "Thank you for fixing the citation, the article reads much better now.",
    "You are a stupid worthless idiot, shut the fuck up.",
    "I will find you and kill you.",
    "Please discuss the change on the talk page before reverting again.",
]


def test_default_model_artifact_follows_the_contract() -> None:
    assert (MODEL_DIR / "model.safetensors").stat().st_size < 10 * 1024 * 1024
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    assert [config["id2label"][str(i)] for i in range(6)] == JIGSAW_LABELS
    assert (config["hidden_size"], config["num_hidden_layers"]) == (128, 2)
    assert (config["num_attention_heads"], config["intermediate_size"]) == (2, 512)
    assert set(config["label_thresholds"]) == set(JIGSAW_LABELS)
    assert config["model_name"] and config["model_version"]
    card = (MODEL_DIR / "README.md").read_text()
    assert "mean ROC-AUC" in card and "TF-IDF" in card


def test_default_model_card_names_no_machine_paths() -> None:
    absolute = re.compile(r"(^|[^\w.])/(work|root|home|tmp|Users)/")
    for name in ("README.md", "training_info.json"):
        assert not absolute.search((MODEL_DIR / name).read_text()), name


def test_default_model_pipeline_matches_worker_and_ranks_toxicity() -> None:
    from worker.model import load_served_model

    clf = pipeline(
        "text-classification", model=str(MODEL_DIR), top_k=None, function_to_apply="sigmoid"
    )
    pipe = np.array(
        [
            [next(r["score"] for r in res if r["label"] == label) for label in JIGSAW_LABELS]
            for res in clf(TEXTS)
        ]
    )
    served = load_served_model(None, device="cpu", precision="fp32")
    assert list(served.contract.labels) == JIGSAW_LABELS
    scores = served.score(TEXTS)
    np.testing.assert_allclose(scores, pipe, rtol=1e-4, atol=1e-5)
    toxic, threat = JIGSAW_LABELS.index("toxic"), JIGSAW_LABELS.index("threat")
    assert min(scores[1, toxic], scores[2, toxic]) > max(scores[0, toxic], scores[3, toxic])
    assert scores[2, threat] > max(scores[0, threat], scores[1, threat], scores[3, threat])
    assert scores[1, toxic] >= served.contract.label_thresholds["toxic"]
    assert scores[0, toxic] < served.contract.label_thresholds["toxic"]


def test_default_model_beats_the_tfidf_baseline_on_the_validation_split() -> None:
    """The committed weights reproduce the card's validation figure and beat TF-IDF + LR on the
    same split (both recorded by `make default-model` in training_info.json)."""
    from training.data import load_dataset, split_dataset
    from training.default_model import SHARED_DATA
    from training.evaluate import compute_metrics
    from worker.model import load_served_model

    if not SHARED_DATA.is_file():
        pytest.skip(f"the Jigsaw rows are not at {SHARED_DATA}")
    info = json.loads((MODEL_DIR / "training_info.json").read_text())
    card_roc = info["metrics"]["mean_roc_auc"]
    tfidf_roc = info["reference_validation"]["tfidf_lr"]["mean_roc_auc"]
    _, val = split_dataset(load_dataset(SHARED_DATA))
    assert len(val) == info["val_rows"]
    scores = load_served_model(None, device="cpu", precision="fp32").score(val.texts)
    measured = compute_metrics(val.labels, scores, JIGSAW_LABELS)["mean_roc_auc"]
    assert abs(measured - card_roc) < 0.002  # fp16 storage vs the fp32 figure on the card
    assert measured > tfidf_roc + 0.005
