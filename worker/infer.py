"""The model backend: a multi-label classifier kept resident on one device.

`Scorer` wraps a Hugging Face `AutoModelForSequenceClassification` with
`problem_type="multi_label_classification"`: every label gets its own sigmoid probability
(never a softmax across labels). Weights load from safetensors only and remote code is never
trusted. Tokenization and the forward pass are separate steps so that callers can time them
and run them off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
SHAPE_MULTIPLE = 32  # with length bucketing, sequence lengths are padded to a multiple of this


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


def apply_precision(
    model: PreTrainedModel, precision: str, device: torch.device
) -> PreTrainedModel:
    """fp32 as loaded; bf16/fp16 weights (fp16 on CUDA only); int8 dynamic quantization of the
    linear layers (CPU only). Scores stay float32 sigmoids whatever the precision."""
    if precision == "fp32":
        return model
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise ModelLoadError("precision fp16 needs a CUDA device; use bf16 on CPU")
        return model.half()
    if precision == "int8":
        if device.type != "cpu":
            raise ModelLoadError("precision int8 (dynamic quantization) runs on CPU only")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
    raise ModelLoadError(f"unknown precision {precision!r}: use one of {PRECISIONS}")


def length_buckets(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into sub-batches of similar length: sorted by length, cut so that each
    sub-batch padded to its longest member holds at most `token_budget` tokens (at least one
    item each). `token_budget <= 0` keeps one batch in the original order; no items, no batch."""
    if not lengths:
        return []
    if token_budget <= 0 or len(lengths) == 1:
        return [list(range(len(lengths)))]
    buckets: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (len(current) + 1) * lengths[index] > token_budget:
            buckets.append(current)
            current = []
        current.append(index)
    buckets.append(current)
    return buckets


def configure_torch(threads: int = 0, interop_threads: int = 0) -> None:
    """Process-wide torch settings of the worker (0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)
    if interop_threads:
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
            torch.set_num_interop_threads(interop_threads)
    torch.set_flush_denormal(True)


def _direct_encoder(tokenizer: PreTrainedTokenizerBase, max_length: int) -> Any:
    """A private copy of a fast tokenizer's Rust backend that truncates exactly as
    `tokenizer(texts, truncation=True, max_length=...)` does, or None where that equivalence
    is not given (slow tokenizers, left padding or truncation, unknown model inputs): those go
    through `transformers`. Padding is done by `Scorer._pad`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if (
        backend is None
        or not hasattr(backend, "encode_batch_fast")
        or tokenizer.padding_side != "right"
        or tokenizer.truncation_side != "right"
        or tokenizer.pad_token_id is None
        or not set(tokenizer.model_input_names) <= {"input_ids", "token_type_ids", "attention_mask"}
    ):
        return None
    encoder = type(backend).from_str(backend.to_str())
    encoder.enable_truncation(max_length)
    encoder.no_padding()
    return encoder


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


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
    precision: str = "fp32"
    token_budget: int = 0
    labels: list[str] = field(init=False)
    thresholds: dict[str, float] = field(init=False)
    _encoder: Any = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        config = self.model.config
        if config.problem_type != MULTI_LABEL:
            raise ModelLoadError(
                f"model {self.name!r} has problem_type={config.problem_type!r}; "
                f"the worker serves {MULTI_LABEL!r} models only"
            )
        if getattr(config, "pooling", None) == "mean":
            raise ModelLoadError(
                f"model {self.name!r} is a mean-pooled teacher artifact (`fit --pooling mean`), "
                "for distillation only; the worker serves stock "
                "AutoModelForSequenceClassification models"
            )
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        configured = getattr(config, "label_thresholds", None) or {}
        self.thresholds = {
            label: float(configured.get(label, DEFAULT_THRESHOLD)) for label in self.labels
        }
        self.model.eval().to(self.device)
        self.model = apply_precision(self.model, self.precision, self.device)
        self._encoder = _direct_encoder(self.tokenizer, self.max_length)

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        device: str = "auto",
        max_length: int = 128,
        precision: str = "fp32",
        token_budget: int = 0,
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
            precision=precision,
            token_budget=token_budget,
        )

    def tokenize(self, texts: list[str]) -> BatchEncoding:
        """Pad to the longest text of the batch, truncate at `max_length` tokens. With length
        bucketing on, lengths are padded up to a multiple of `SHAPE_MULTIPLE`: the kernels
        (oneDNN builds one per shape on CPU) then see a few shapes again and again.

        Fast tokenizers are called through their Rust backend directly (the same ids as the
        `transformers` call, tested; about 40 % less time per comment, measured)."""
        if self._encoder is not None and texts:
            return self._pad(self._encoder.encode_batch_fast(texts))
        return self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            pad_to_multiple_of=SHAPE_MULTIPLE if self.token_budget > 0 else None,
        )

    def warm_up(self, max_batch_size: int) -> int:
        """Run once every batch shape that length bucketing makes within its token budget
        (lengths padded to multiples of `SHAPE_MULTIPLE`, batch sizes up to what the budget
        allows), so that requests do not pay for a kernel's first use (oneDNN builds bf16
        kernels per shape: 4-30 ms each, measured). Without bucketing the shapes are
        unbounded: one small batch only. Returns the number of shapes run."""
        if self.token_budget <= 0:
            self.score(["warm-up"])
            return 1
        lengths = range(SHAPE_MULTIPLE, self.max_length + SHAPE_MULTIPLE, SHAPE_MULTIPLE)
        shapes = [
            (batch, length)
            for length in lengths
            for batch in range(1, max(1, min(max_batch_size, self.token_budget // length)) + 1)
        ]
        for batch, length in shapes:
            ids = torch.full((batch, length), self.tokenizer.unk_token_id or 0, dtype=torch.long)
            encoding = {
                "input_ids": ids,
                "token_type_ids": torch.zeros_like(ids),
                "attention_mask": torch.ones_like(ids),
            }
            self.infer(BatchEncoding({k: encoding[k] for k in self.tokenizer.model_input_names}))
        return len(shapes)

    def tokenize_buckets(self, texts: list[str]) -> list[tuple[list[int], BatchEncoding]]:
        """Length bucketing: (indices, encoding) sub-batches of similar-length texts, each padded
        to its own longest, so little compute goes to padding; the budget counts padded
        tokens. With the fast path, the batch is tokenized in one call and bucketed by its real
        token counts; otherwise character length estimates them (cheap, close to token order)."""
        if self._encoder is not None and self.token_budget > 0 and texts:
            encodings = self._encoder.encode_batch_fast(texts)
            lengths = [_round_up(len(e.ids), SHAPE_MULTIPLE) for e in encodings]
            return [
                (indices, self._staged(self._pad([encodings[i] for i in indices])))
                for indices in length_buckets(lengths, self.token_budget)
            ]
        estimates = [
            min(self.max_length, _round_up(len(text) // 4 + 2, SHAPE_MULTIPLE)) for text in texts
        ]
        return [
            (indices, self._staged(self.tokenize([texts[i] for i in indices])))
            for indices in length_buckets(estimates, self.token_budget)
        ]

    def _pad(self, encodings: list[Any]) -> BatchEncoding:
        """Right-pad backend encodings to the longest (rounded up to `SHAPE_MULTIPLE` when
        bucketing), as the `transformers` call with `padding="longest"` does."""
        longest = max(len(e.ids) for e in encodings)
        width = _round_up(longest, SHAPE_MULTIPLE) if self.token_budget > 0 else longest
        shape = (len(encodings), width)
        columns = {
            "input_ids": np.full(shape, self.tokenizer.pad_token_id, dtype=np.int64),
            "token_type_ids": np.full(shape, self.tokenizer.pad_token_type_id, dtype=np.int64),
            "attention_mask": np.zeros(shape, dtype=np.int64),
        }
        for row, encoding in enumerate(encodings):
            n = len(encoding.ids)
            columns["input_ids"][row, :n] = encoding.ids
            columns["token_type_ids"][row, :n] = encoding.type_ids
            columns["attention_mask"][row, :n] = 1
        return BatchEncoding(
            {name: torch.from_numpy(columns[name]) for name in self.tokenizer.model_input_names}
        )

    def _staged(self, encoding: BatchEncoding) -> BatchEncoding:
        """On CUDA, page-locked host tensors (pinned here, on the tokenizer thread), so that the
        copy to the GPU in `infer` is asynchronous (`non_blocking=True`)."""
        if self.device.type != "cuda":
            return encoding
        return BatchEncoding({key: value.pin_memory() for key, value in encoding.items()})

    def infer(self, encoding: BatchEncoding) -> np.ndarray:
        """Forward pass + per-label sigmoid; returns (batch, labels) float32 probabilities."""
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in encoding.items()}
        with torch.inference_mode():
            logits = self.model(**inputs).logits
            return torch.sigmoid(logits.float()).cpu().numpy()

    def score(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        buckets = self.tokenize_buckets(texts)
        return self.infer_buckets(buckets, len(texts))

    def infer_buckets(self, buckets: list[tuple[list[int], BatchEncoding]], n: int) -> np.ndarray:
        """Infer each bucket; rows come back in the original order of the texts."""
        probabilities = np.empty((n, len(self.labels)), dtype=np.float32)
        for indices, encoding in buckets:
            probabilities[indices] = self.infer(encoding)
        return probabilities

    def flagged(self, probabilities: np.ndarray) -> list[str]:
        """Labels at or above their threshold, for one row of probabilities."""
        return [
            label
            for label, p in zip(self.labels, probabilities, strict=True)
            if p >= self.thresholds[label]
        ]
