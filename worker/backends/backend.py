"""The backend contract: a padded token batch in, per-label probabilities out.

Everything before the backend (transport, tokenization, batching) is backend-agnostic; a
backend only loads a model, warms up the shapes it will see, and runs one batch at a time on
the inference thread. `TorchBackend` (worker/backends/torch_backend.py) is the first implementation.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

SHAPE_MULTIPLE = 32  # sequence lengths are padded to a multiple of this: few distinct shapes


def padded_length(n_tokens: int, multiple: int = SHAPE_MULTIPLE) -> int:
    """The length a sequence of `n_tokens` is padded to."""
    return -(-n_tokens // multiple) * multiple


class ModelLoadError(RuntimeError):
    """The model cannot be served (missing, corrupt, not multi-label); one line, fit to print."""


@dataclass(frozen=True, slots=True)
class TokenBatch:
    """Right-padded int64 arrays of shape (batch, length), as BERT-style models take them."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.input_ids.shape[0]), int(self.input_ids.shape[1]))


class Backend(Protocol):
    """One model resident on one device. `infer` and `infer_passes` are called from one thread
    at a time. A class that subclasses `Backend` inherits `infer_passes` as one `infer` a pass."""

    kind: str  # "torch", "onnx", ...
    device: str  # "cpu", "cuda:0", ...
    precision: str  # "fp32", "bf16", "fp16", "int8"
    labels: tuple[str, ...]

    def warm_up(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Run each (batch size, length) shape once so requests do not pay first-use costs."""
        ...

    def infer(self, batch: TokenBatch) -> np.ndarray:
        """(batch, labels) float32 probabilities: one sigmoid per label, never a softmax."""
        ...

    def infer_passes(self, batches: list[TokenBatch]) -> list[np.ndarray]:
        """The forward passes of one batch, each as `infer` would score it, in order. A backend
        that can run them in one call does (the traced torch graph on CPU releases the GIL once
        for all of them)."""
        return [self.infer(batch) for batch in batches]
