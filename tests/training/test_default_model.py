"""The committed default model: contract keys, size, stock pipeline == worker loader, sanity."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from testing.pipeline import pipeline_scores
from training import JIGSAW_LABELS
from training.data import TextDataset

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
    from worker.backends.model import load_served_model

    pipe = pipeline_scores(MODEL_DIR, TEXTS)
    served = load_served_model(None, device="cpu", precision="fp32")
    assert list(served.contract.labels) == JIGSAW_LABELS
    scores = served.score(TEXTS)
    np.testing.assert_allclose(scores, pipe, rtol=1e-4, atol=1e-5)
    toxic, threat = JIGSAW_LABELS.index("toxic"), JIGSAW_LABELS.index("threat")
    assert min(scores[1, toxic], scores[2, toxic]) > max(scores[0, toxic], scores[3, toxic])
    assert scores[2, threat] > max(scores[0, threat], scores[1, threat], scores[3, threat])
    assert scores[1, toxic] >= served.contract.label_thresholds["toxic"]
    assert scores[0, toxic] < served.contract.label_thresholds["toxic"]


@pytest.fixture(scope="module")
def validation() -> tuple[TextDataset, np.ndarray]:
    """The card's validation split and the served model's scores on it."""
    from training.data import load_dataset, split_dataset
    from training.default_model import SHARED_DATA
    from worker.backends.model import load_served_model

    if not SHARED_DATA.is_file():
        pytest.skip(f"the Jigsaw rows are not at {SHARED_DATA}")
    _, val = split_dataset(load_dataset(SHARED_DATA))
    return val, load_served_model(None, device="cpu", precision="fp32").score(val.texts)


def test_default_model_is_the_all_rows_refit_with_its_estimate_on_the_card(
    validation: tuple[TextDataset, np.ndarray],
) -> None:
    """The committed weights are the refit on all rows: they reproduce the figure recorded for
    them on the 80/20 validation rows (in-sample for them, so far above the estimate), and the
    card's figures are the estimate from the recipe's 80/20 build, which beat TF-IDF + LR on
    its held-out rows (`make default-model` records both in training_info.json)."""
    from training.evaluate import compute_metrics

    info = json.loads((MODEL_DIR / "training_info.json").read_text())
    val, scores = validation
    assert info["train_rows"] == len(load_all_rows()) > len(val)
    measured = compute_metrics(val.labels, scores, JIGSAW_LABELS)["mean_roc_auc"]
    # fp16 storage vs the fp32 figure; calibration changes no ROC-AUC
    assert abs(measured - info["in_sample_validation"]["mean_roc_auc"]) < 0.002
    estimate = info["metrics"]["mean_roc_auc"]
    assert measured > estimate + 0.005  # these rows were learned: not an estimate
    reference = info["estimate_from"]
    assert reference["val_rows"] == info["val_rows"] == len(val)
    assert estimate > reference["reference_validation"]["tfidf_lr"]["mean_roc_auc"] + 0.005
    card = (MODEL_DIR / "README.md").read_text()
    assert f"- mean ROC-AUC: {estimate:.4f}" in card
    assert all(note in card for note in info["notes"]) and f"`{reference['model_version']}`" in card


def load_all_rows() -> TextDataset:
    from training.data import load_dataset
    from training.default_model import SHARED_DATA

    return load_dataset(SHARED_DATA)


def test_default_model_is_calibrated_for_the_full_jigsaw_rates() -> None:
    from schemas.artifact import ONNX_META_WEIGHTS, read_contract, weights_version
    from training.calibration import JIGSAW_BASE_RATES
    from training.onnx_export import read_metadata

    contract = read_contract(MODEL_DIR)
    assert contract.calibration is not None and contract.calibration.method == "platt"
    assert all(entry.fitted for entry in contract.calibration.labels.values())
    # calibrated for the rates the recipe names (the full Jigsaw train set's), from the rates
    # of the rows it was trained on, as its training record says
    info = json.loads((MODEL_DIR / "training_info.json").read_text())
    assert contract.label_base_rates == JIGSAW_BASE_RATES == info["calibration"]["label_base_rates"]
    assert contract.label_training_rates == info["label_positive_rates"]
    # our rows are richer in every label than the traffic the scores are calibrated for
    assert all(
        0 < base < contract.label_training_rates[label]
        for label, base in contract.label_base_rates.items()
    )
    card = (MODEL_DIR / "README.md").read_text()
    assert "## Calibration" in card and "training rate" in card and "base rate" in card
    for label in JIGSAW_LABELS:
        base, training = contract.label_base_rates[label], contract.label_training_rates[label]
        assert f"| {label} | {training:.4f} | {base:.4f} |" in card
    # both graphs (int8: ONNX Runtime; fp32: OpenVINO) were exported from the calibrated
    # weights (the worker checks this too), and the training record names both
    for name in ("model.onnx", "model.int8.onnx"):
        graph = read_metadata(MODEL_DIR / name)
        assert graph[ONNX_META_WEIGHTS] == weights_version(MODEL_DIR / "model.safetensors"), name
    assert (info["onnx"]["fp32"], info["onnx"]["int8"]) == ("model.onnx", "model.int8.onnx")


def test_default_model_calibration_is_matched_to_the_80_20_build(
    validation: tuple[TextDataset, np.ndarray],
) -> None:
    """The refit has no held-out rows: its calibration reproduces the 80/20 build's (whose ECE,
    on its held-out rows, the card reports), and its thresholds are that build's. What can be
    checked here: the served probabilities sit at the full-set rates (moved back to the rows'
    own rates, their mean is the rows' rate), and the records agree with each other."""
    from schemas.artifact import read_contract
    from training.calibration import logit, sigmoid

    contract = read_contract(MODEL_DIR)
    assert contract.calibration is not None and contract.label_base_rates is not None
    info = json.loads((MODEL_DIR / "training_info.json").read_text())
    recorded = info["calibration"]
    assert recorded["reference"]["model_version"] == info["estimate_from"]["model_version"]
    assert contract.calibration.rows == info["estimate_from"]["train_rows"]
    for label in JIGSAW_LABELS:
        assert recorded["table"][label]["ece_after"] <= 0.02, label  # the 80/20 build's
        assert recorded["agreement_with_reference"][label]["flag_agreement"] >= 0.98, label
        assert info["metrics"]["labels"][label]["threshold"] == pytest.approx(
            contract.label_thresholds[label]
        )
    val, scores = validation
    y = val.labels
    assert y is not None
    rates = y.mean(axis=0)
    base = np.array([contract.label_base_rates[label] for label in JIGSAW_LABELS])
    assert (scores.mean(axis=0) < rates).all()  # served at the (lower) full-set rates
    moved_back = sigmoid(logit(scores) + logit(rates) - logit(base))
    np.testing.assert_allclose(moved_back.mean(axis=0), rates, rtol=0.15)
