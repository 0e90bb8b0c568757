"""The artifact contract's calibration fields: read back, validated, and refused by the worker."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from schemas.artifact import ArtifactContract, ArtifactError, read_contract

LABELS = ("toxic", "threat")
RATES = {"toxic": 0.096, "threat": 0.003}
TRAINING = {"toxic": 0.29, "threat": 0.009}
CALIBRATION = {
    "method": "platt",
    "folded": True,
    "fitted_on": "validation split",
    "rows": 100,
    "labels": {
        "toxic": {"slope": 1.1, "intercept": -0.2, "prior_shift": -1.3, "positives": 29},
        "threat": {"slope": 0.9, "intercept": 0.1, "prior_shift": -1.1, "positives": 1},
    },
}


def _config(**extra: Any) -> dict[str, Any]:
    return {
        "problem_type": "multi_label_classification",
        "id2label": {"0": "toxic", "1": "threat"},
        "label_thresholds": {"toxic": 0.2, "threat": 0.1},
        **extra,
    }


def _contract(**extra: Any) -> ArtifactContract:
    return ArtifactContract.from_config(_config(**extra), default_name="m", default_version="v")


def test_old_artifacts_without_calibration_stay_valid() -> None:
    contract = _contract()
    assert contract.calibration is None
    assert contract.label_base_rates is None and contract.label_training_rates is None
    assert set(contract.config_entries()) == {
        "model_name",
        "model_version",
        "problem_type",
        "label_thresholds",
        "api_attributes",  # the HTTP API's attribute map, defaulted from the labels
        "served_languages",  # English only, for an artifact that names none
    }
    assert contract.served_languages == ("en",)


def test_calibration_and_rates_round_trip_through_config_json() -> None:
    contract = _contract(
        calibration=CALIBRATION, label_base_rates=RATES, label_training_rates=TRAINING
    )
    assert contract.calibration is not None
    assert contract.calibration.labels["toxic"].slope == 1.1
    assert contract.calibration.labels["threat"].fitted  # default: fitted
    assert contract.calibration.total_offset("toxic") == pytest.approx(-1.5)
    assert contract.label_base_rates == RATES and contract.label_training_rates == TRAINING
    entries = contract.config_entries()
    again = ArtifactContract.from_config(
        {**_config(), **entries}, default_name="x", default_version="y"
    )
    assert again == contract
    json.dumps(entries)  # plain JSON


def test_served_languages_round_trip_through_config_json() -> None:
    contract = _contract(served_languages=["es", "en"])
    assert contract.served_languages == ("es", "en")
    entries = contract.config_entries()
    assert entries["served_languages"] == ["es", "en"]
    again = ArtifactContract.from_config(
        {**_config(), **entries}, default_name="x", default_version="y"
    )
    assert again == contract


def test_the_bundled_model_serves_english() -> None:
    from worker.backends.model import DEFAULT_MODEL_DIR

    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["served_languages"] == ["en"]
    assert read_contract(DEFAULT_MODEL_DIR).served_languages == ("en",)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"served_languages": ["English"]}, "served_languages.0: String should match pattern"),
        ({"served_languages": "en"}, "served_languages: Input should be a valid tuple"),
        ({"label_base_rates": {"toxic": 0.1}}, "label_base_rates must name every label"),
        ({"label_base_rates": {"toxic": 0.1, "threat": 0.0}}, "strictly between 0 and 1"),
        ({"label_training_rates": {"toxic": 1.0, "threat": 0.1}}, "strictly between 0 and 1"),
        (
            {"calibration": {**CALIBRATION, "method": "isotonic"}},
            "calibration.method: Input should be 'platt'",
        ),
        ({"calibration": {**CALIBRATION, "folded": False}}, "calibration.folded"),
        (
            {
                "calibration": {
                    **CALIBRATION,
                    "labels": {**CALIBRATION["labels"], "toxic": {"slope": -1, "intercept": 0}},
                }
            },
            "calibration.labels.toxic.slope: Input should be greater than 0",
        ),
        (
            {"calibration": {**CALIBRATION, "labels": {"toxic": CALIBRATION["labels"]["toxic"]}}},
            "calibration.labels must name every label",
        ),
    ],
)
def test_bad_calibration_is_refused_in_one_line(
    tmp_path: Path, extra: dict[str, Any], message: str
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_config(**extra)))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ArtifactError) as caught:
        read_contract(tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_worker_refuses_a_calibration_it_would_have_to_apply(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from worker.backends.backend import ModelLoadError
    from worker.backends.model import load_served_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    labels = list(config["id2label"].values())
    entry = {"slope": 1.0, "intercept": 0.0, "positives": 1}
    unfolded = {**CALIBRATION, "folded": False, "labels": dict.fromkeys(labels, entry)}
    (model_dir / "config.json").write_text(json.dumps({**config, "calibration": unfolded}))
    with pytest.raises(ModelLoadError, match=r"calibration\.folded"):
        load_served_model(model_dir, device="cpu", precision="fp32")
    folded = {**unfolded, "folded": True}
    rates = dict.fromkeys(labels, 0.1)
    (model_dir / "config.json").write_text(
        json.dumps({**config, "calibration": folded, "label_base_rates": rates})
    )
    served = load_served_model(model_dir, device="cpu", precision="fp32")
    assert served.contract.label_base_rates == rates
