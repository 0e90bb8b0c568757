"""The artifact contract: what a served model directory promises, shared by training and worker.

An artifact is a Hugging Face `save_pretrained` directory (`config.json`, `model.safetensors`,
tokenizer files). Training export writes the entries of `ArtifactContract` into `config.json`;
the worker reads them back with `ArtifactContract.from_config`. Nothing here does I/O beyond
reading `config.json` and hashing the weights file for a version.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

MULTI_LABEL = "multi_label_classification"
TOXICITY_LABELS = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
DEFAULT_THRESHOLD = 0.5
# Perspective API attribute -> model label, for the Perspective-compatible HTTP API
# (worker/http/perspective.py). An artifact may state its own map (`api_attributes` in config.json);
# without one, the entries of this map whose label the model has are served.
DEFAULT_API_ATTRIBUTES = {
    "TOXICITY": "toxic",
    "SEVERE_TOXICITY": "severe_toxic",
    "PROFANITY": "obscene",
    "THREAT": "threat",
    "INSULT": "insult",
    "IDENTITY_ATTACK": "identity_hate",
}
# The languages a model scores as it was trained to (ISO 639-1 codes, the first the main one). An
# artifact without `served_languages` in config.json serves English only (every model before it
# was trained on English Jigsaw comments).
DEFAULT_SERVED_LANGUAGES = ("en",)
LANGUAGE_CODE = r"^[a-z]{2,3}$"  # ISO 639-1 (or 639-3 where a language has no 639-1 code)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VERSION_CHARS = 12

# The ONNX graphs beside the weights (written by `moderation-train export --onnx`): inputs are the
# token arrays, the one output the per-label sigmoid; metadata ties the graph to its weights.
ONNX_FILES = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_OUTPUT = "probabilities"
ONNX_META_WEIGHTS = "weights_version"  # `weights_version` of model.safetensors
ONNX_META_LABELS = "labels"  # JSON list: the order of the output columns


class ArtifactError(ValueError):
    """The directory does not meet the contract; the message is one line."""


class LabelCalibration(BaseModel):
    """One label's calibration, relative to the uncalibrated head's logit z:
    p = sigmoid(slope * z + intercept + prior_shift). Already applied in the head's weights."""

    model_config = ConfigDict(frozen=True)

    slope: float = Field(gt=0, description="Platt slope a (> 0: the map is increasing)")
    intercept: float = Field(description="Platt intercept b")
    prior_shift: float = Field(
        default=0.0, description="logit(label_base_rate) - logit(label_training_rate)"
    )
    positives: int = Field(ge=0, description="positive rows among those the map was fitted on")
    fitted: bool = Field(
        default=True, description="false: no usable fit (slope 1, intercept 0: only the shift)"
    )


class Calibration(BaseModel):
    """Per-label calibration stored in `config.json` under `calibration`.

    `folded: true` is the only kind there is: the maps are affine in logit space (Platt scaling
    plus the prior shift) and are folded into the classifier head's weight and bias, so every
    consumer's `sigmoid(logits)` is already the calibrated probability; these numbers document
    the fit (and let training undo it). A method a consumer would have to apply itself is not
    part of the contract, so such an artifact fails validation instead of being served raw.
    """

    model_config = ConfigDict(frozen=True)

    method: Literal["platt"] = "platt"
    folded: Literal[True] = True
    fitted_on: str = Field(min_length=1, description="the rows the maps were fitted on")
    rows: int = Field(gt=0)
    labels: dict[str, LabelCalibration]

    def total_offset(self, label: str) -> float:
        """intercept + prior_shift of `label`: the calibrated logit is slope * z + this."""
        entry = self.labels[label]
        return entry.intercept + entry.prior_shift


class CollapseRecord(BaseModel):
    """A collapsed model's verdict, stored in `config.json` under `collapsed`: the model gives
    every text (nearly) the same scores, or ranks no better than chance (`training.collapse`).
    Export refuses such a model; `moderation-train export --force` writes it with this record,
    and the worker warns at start (`collapse_warning`)."""

    model_config = ConfigDict(frozen=True)

    checked_on: str = Field(min_length=1, description="the labeled rows the check ran on")
    detail: str = Field(min_length=1, description="what was measured (spread, macro ROC-AUC)")


def _check_rates(name: str, rates: dict[str, float] | None, labels: tuple[str, ...]) -> None:
    if rates is None:
        return
    if set(rates) != set(labels):
        raise ValueError(f"{name} must name every label, and only those")
    bad = {label: rate for label, rate in rates.items() if not 0.0 < rate < 1.0}
    if bad:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {bad}")


class ArtifactContract(BaseModel):
    """The served model's identity and decision rule, as stored in `config.json`."""

    model_config = ConfigDict(frozen=True)

    model_name: str = Field(min_length=1)
    model_version: str = Field(min_length=1)
    problem_type: Literal["multi_label_classification"] = MULTI_LABEL
    labels: tuple[str, ...] = Field(min_length=1)
    label_thresholds: dict[str, float]
    calibration: Calibration | None = Field(
        default=None, description="Per-label calibration, folded into the head (None: raw)."
    )
    label_base_rates: dict[str, float] | None = Field(
        default=None, description="The label rates the probabilities assume (prior correction)."
    )
    label_training_rates: dict[str, float] | None = Field(
        default=None, description="The label rates of the rows the probabilities were fitted to."
    )
    api_attributes: dict[str, str] = Field(
        description="Perspective API attribute name -> the label whose score it reports "
        "(default: the entries of DEFAULT_API_ATTRIBUTES whose label the model has)."
    )
    served_languages: tuple[Annotated[str, StringConstraints(pattern=LANGUAGE_CODE)], ...] = Field(
        default=DEFAULT_SERVED_LANGUAGES,
        min_length=1,
        description="ISO 639-1 codes of the languages the model serves, the main one first "
        "(default: English only).",
    )
    collapsed: CollapseRecord | None = Field(
        default=None,
        description="Set when the model was written although it looks collapsed (training's "
        "run directory, `export --force`); None: not collapsed, or never checked.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_api_attributes(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("api_attributes") is None:
            labels = set(data.get("labels") or ())
            defaults = {a: label for a, label in DEFAULT_API_ATTRIBUTES.items() if label in labels}
            data = data | {"api_attributes": defaults}
        return data

    @model_validator(mode="after")
    def _thresholds_cover_labels(self) -> ArtifactContract:
        if set(self.label_thresholds) != set(self.labels):
            raise ValueError("label_thresholds must name every label, and only those")
        _check_rates("label_base_rates", self.label_base_rates, self.labels)
        _check_rates("label_training_rates", self.label_training_rates, self.labels)
        if self.calibration is not None and set(self.calibration.labels) != set(self.labels):
            raise ValueError("calibration.labels must name every label, and only those")
        unknown = sorted(set(self.api_attributes.values()) - set(self.labels))
        if unknown:
            raise ValueError(f"api_attributes map to labels the model does not have: {unknown}")
        return self

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, default_name: str, default_version: str
    ) -> ArtifactContract:
        """Read the contract from a `config.json` dict. Models not exported by our training
        (any multi-label hub model) get the default threshold and the given name/version."""
        problem = config.get("problem_type")
        if problem != MULTI_LABEL:
            raise ArtifactError(
                f"problem_type is {problem!r}; only {MULTI_LABEL!r} models are served "
                "(one sigmoid per label)"
            )
        id2label = config.get("id2label") or {}
        try:
            labels = tuple(str(id2label[key]) for key in sorted(id2label, key=int))
        except (KeyError, ValueError) as exc:
            raise ArtifactError(f"id2label is malformed: {exc!r}") from None
        configured = config.get("label_thresholds") or {}
        return cls(
            model_name=str(config.get("model_name") or default_name),
            model_version=str(config.get("model_version") or default_version),
            labels=labels,
            label_thresholds={
                label: float(configured.get(label, DEFAULT_THRESHOLD)) for label in labels
            },
            calibration=config.get("calibration"),
            label_base_rates=config.get("label_base_rates"),
            label_training_rates=config.get("label_training_rates"),
            api_attributes=config.get("api_attributes"),
            served_languages=config.get("served_languages") or DEFAULT_SERVED_LANGUAGES,
            collapsed=config.get("collapsed"),
        )

    def config_entries(self) -> dict[str, Any]:
        """The `config.json` keys this contract owns (training export writes exactly these)."""
        entries = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "problem_type": self.problem_type,
            "label_thresholds": dict(self.label_thresholds),
            "api_attributes": dict(self.api_attributes),
            "served_languages": list(self.served_languages),
        }
        if self.calibration is not None:
            entries["calibration"] = self.calibration.model_dump(mode="json")
        if self.collapsed is not None:
            entries["collapsed"] = self.collapsed.model_dump(mode="json")
        for key in ("label_base_rates", "label_training_rates"):
            rates = getattr(self, key)
            if rates is not None:
                entries[key] = dict(rates)
        return entries

    def collapse_warning(self) -> str | None:
        """One line for an artifact written although it looks collapsed (None otherwise): what
        was measured, what it means for the flags, and what to do."""
        if self.collapsed is None:
            return None
        return (
            f"model {self.model_name} (version {self.model_version}) looks collapsed: on "
            f"{self.collapsed.checked_on}, {self.collapsed.detail}. It gives every text about the "
            "same scores, so it flags everything or nothing whatever the text; it was written "
            "anyway (moderation-train export --force, or a training run's model directory). "
            "Serve another model (the bundled one: unset MODERATION_MODEL), or retrain it: more "
            "epochs or a higher learning rate, or fine-tune the bundled model "
            "(moderation-train fit --init-from worker/default_model, training/README.md)"
        )

    def flagged(self, probabilities: Any) -> list[str]:
        """Labels at or above their threshold, for one row of probabilities."""
        return [
            label
            for label, p in zip(self.labels, probabilities, strict=True)
            if p >= self.label_thresholds[label]
        ]


def weights_version(weights: Path) -> str:
    """The version of an artifact whose config names none: a prefix of its weights' sha256."""
    digest = hashlib.sha256()
    with weights.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:VERSION_CHARS]


def read_contract(model_dir: Path, default_name: str | None = None) -> ArtifactContract:
    """The contract an artifact directory states, with the defaults the worker applies
    (name: `default_name` or the directory's name; version: a prefix of the weights' sha256).
    Raises `ArtifactError` (one line) for a directory that is not a servable artifact."""
    config_file, weights = model_dir / CONFIG_FILE, model_dir / WEIGHTS_FILE
    if not config_file.is_file():
        raise ArtifactError(f"{model_dir} has no {CONFIG_FILE}: not a model artifact")
    if not weights.is_file():
        raise ArtifactError(
            f"{model_dir} has no {WEIGHTS_FILE} (weights are served from safetensors only)"
        )
    try:
        config = json.loads(config_file.read_text())
        return ArtifactContract.from_config(
            config,
            default_name=default_name or model_dir.resolve().name,
            default_version=weights_version(weights),
        )
    except ValidationError as exc:  # a contract field out of range: one line per the contract
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'config'}: {error['msg']}"
            for error in exc.errors()
        )
        raise ArtifactError(f"{config_file}: {problems}") from None
    except ValueError as exc:  # bad JSON
        raise ArtifactError(f"{config_file}: {exc}") from None
