"""The model backend: a multi-label classifier kept resident on one device.

`Scorer` wraps a Hugging Face `AutoModelForSequenceClassification` with
`problem_type="multi_label_classification"`: every label gets its own sigmoid probability
(never a softmax across labels). Weights load from safetensors only and remote code is never
trusted. Tokenization and the forward pass are separate steps so that callers can time them
and run them off the event loop.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
MULTI_LABEL = "multi_label_classification"
DEFAULT_THRESHOLD = 0.5


class ModelLoadError(RuntimeError):
    """The model cannot be served (missing, not multi-label, or not safetensors)."""


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return torch.device(device)


def default_model_has_weights() -> bool:
    return (DEFAULT_MODEL_DIR / "model.safetensors").is_file()


def _weights_version(model_dir: Path) -> str:
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        return "unknown"
    digest = hashlib.sha256()
    with weights.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _random_default_model() -> PreTrainedModel:
    """A seeded random BERT-Tiny-shaped classifier: the stand-in until trained weights ship."""
    config = AutoConfig.from_pretrained(DEFAULT_MODEL_DIR)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_config(config)


@dataclass
class Scorer:
    """A tokenizer and a multi-label model, resident on `device`, with per-label thresholds."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    name: str
    version: str
    max_length: int = 128
    labels: list[str] = field(init=False)
    thresholds: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        config = self.model.config
        if config.problem_type != MULTI_LABEL:
            raise ModelLoadError(
                f"model {self.name!r} has problem_type={config.problem_type!r}; "
                f"the worker serves {MULTI_LABEL!r} models only"
            )
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        configured = getattr(config, "label_thresholds", None) or {}
        self.thresholds = {
            label: float(configured.get(label, DEFAULT_THRESHOLD)) for label in self.labels
        }
        self.model.eval().to(self.device)

    @classmethod
    def load(
        cls, model: str | Path | None = None, device: str = "auto", max_length: int = 128
    ) -> Scorer:
        """Load a hub id or `save_pretrained` directory; None means the bundled default model."""
        torch_device = resolve_device(device)
        hf_logging.disable_progress_bar()
        source = str(model) if model is not None else str(DEFAULT_MODEL_DIR)
        is_default = model is None
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            if is_default and not default_model_has_weights():
                log.warning(
                    "No trained weights in %s: serving a RANDOM BERT-Tiny-shaped model "
                    "(seed 0). Its scores mean nothing; build one with `make default-model`.",
                    DEFAULT_MODEL_DIR,
                )
                net = _random_default_model()
                name, version = "random-bert-tiny", "untrained"
            else:
                net = AutoModelForSequenceClassification.from_pretrained(
                    source, use_safetensors=True, trust_remote_code=False
                )
                local = Path(source)
                name = getattr(net.config, "model_name", None) or (
                    local.name if local.is_dir() else source
                )
                version = getattr(net.config, "model_version", None) or (
                    _weights_version(local) if local.is_dir() else "unknown"
                )
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load model {source!r}: {exc}") from exc
        return cls(
            model=net.float(),
            tokenizer=tokenizer,
            device=torch_device,
            name=str(name),
            version=str(version),
            max_length=max_length,
        )

    def tokenize(self, texts: list[str]) -> BatchEncoding:
        """Pad to the longest text of the batch, truncate at `max_length` tokens."""
        return self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )

    def infer(self, encoding: BatchEncoding) -> np.ndarray:
        """Forward pass + per-label sigmoid; returns (batch, labels) float32 probabilities."""
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in encoding.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits
            return torch.sigmoid(logits.float()).cpu().numpy()

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return self.infer(self.tokenize(texts))

    def flagged(self, probabilities: np.ndarray) -> list[str]:
        """Labels at or above their threshold, for one row of probabilities."""
        return [
            label
            for label, p in zip(self.labels, probabilities, strict=True)
            if p >= self.thresholds[label]
        ]
