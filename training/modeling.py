"""Model, tokenizer and batching helpers shared by fit, distill, evaluate and export."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.modeling_outputs import SequenceClassifierOutput

from schemas.artifact import MULTI_LABEL

log = logging.getLogger(__name__)

Pooling = Literal["cls", "mean"]
HEAD_FILE = "head.safetensors"  # the head of a MeanPooledClassifier
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def setup_torch(threads: int = 0, seed: int | None = None) -> None:
    """CPU settings that matter here: flush denormals (a large slowdown on these CPUs without it,
    docs/training.md), threads, seed."""
    torch.set_flush_denormal(True)
    if threads > 0:
        torch.set_num_threads(threads)
    if seed is not None:
        torch.manual_seed(seed)
        np.random.seed(seed % (2**32))


def autocast(enabled: bool) -> contextlib.AbstractContextManager[object]:
    """bf16 autocast on CPU when enabled, else a no-op context."""
    if enabled:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def has_weights(model_ref: str | Path) -> bool:
    """False only for a local directory that holds a config but no weights."""
    path = Path(model_ref)
    if not path.is_dir():
        return True
    return any((path / name).exists() for name in _WEIGHT_FILES)


def load_tokenizer(ref: str | Path) -> PreTrainedTokenizerBase:
    """Fast tokenizer from a hub id or a local directory."""
    return AutoTokenizer.from_pretrained(str(ref), use_fast=True)


def label_config_kwargs(labels: Sequence[str]) -> dict[str, object]:
    """`from_pretrained`/config keyword arguments for a multi-label head over `labels`."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": MULTI_LABEL,
    }


class MeanPooledClassifier(nn.Module):
    """An encoder, a masked mean over its last hidden states and a linear multi-label head.

    For teachers only (`fit --pooling mean`): sentence-embedding checkpoints such as
    all-MiniLM-L6-v2 were trained through mean pooling, and their [CLS] pooler is untrained
    (the two heads compared: docs/training.md). The artifacts the worker serves stay stock
    `AutoModelForSequenceClassification`.
    Saved as the encoder's `save_pretrained` directory (`config.json` gets `"pooling": "mean"`)
    plus `head.safetensors`; `load_classifier` reads it back.
    """

    def __init__(self, encoder: PreTrainedModel, num_labels: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = encoder.config
        self.config.pooling = "mean"
        self.dropout = nn.Dropout(getattr(self.config, "hidden_dropout_prob", 0.1))
        self.classifier = nn.Linear(self.config.hidden_size, num_labels)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> SequenceClassifierOutput:
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=output_hidden_states,
        )
        pooled = mean_pool(out.last_hidden_state, attention_mask)
        logits = self.classifier(self.dropout(pooled))
        return SequenceClassifierOutput(logits=logits, hidden_states=out.hidden_states)


def build_classifier(
    base: str | Path,
    labels: Sequence[str],
    *,
    from_config: bool | None = None,
    pooling: Pooling = "cls",
) -> PreTrainedModel:
    """`AutoModelForSequenceClassification` over `labels` from a hub id or local path
    (`pooling="mean"`: a `MeanPooledClassifier` on the base encoder, for teachers).

    `from_config=None` builds random weights only when `base` is a local directory without
    weights (e.g. a config + tokenizer folder); True forces random weights from the config.
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"unknown pooling {pooling!r}: use cls or mean")
    kwargs = label_config_kwargs(labels)
    if from_config is None:
        from_config = not has_weights(base)
        if from_config:
            log.warning("%s has no weights: building a randomly initialised model", base)
    if pooling == "mean":
        encoder = (
            AutoModel.from_config(AutoConfig.from_pretrained(str(base), **kwargs))
            if from_config
            else AutoModel.from_pretrained(str(base), **kwargs)
        )
        return cast(PreTrainedModel, MeanPooledClassifier(encoder, len(labels)))
    if from_config:
        config = AutoConfig.from_pretrained(str(base), **kwargs)
        return AutoModelForSequenceClassification.from_config(config)
    return AutoModelForSequenceClassification.from_pretrained(
        str(base), ignore_mismatched_sizes=_new_head(base, labels), **kwargs
    )


def _new_head(base: str | Path, labels: Sequence[str]) -> bool:
    """Whether `base` is a classifier whose head has another number of outputs than `labels`
    (e.g. `worker/default_model`'s six, fine-tuned on other labels): its head is then replaced
    by a new one, said in a warning, where transformers would stop with a size mismatch."""
    config = AutoConfig.from_pretrained(str(base))
    known = getattr(config, "id2label", None) or {}
    trained = config.architectures and any(
        name.endswith("ForSequenceClassification") for name in config.architectures
    )
    if not trained or len(known) == len(labels):
        return False
    log.warning(
        "%s is a classifier for %s; training a new head for %s (the encoder is kept)",
        base,
        list(known.values()),
        list(labels),
    )
    return True


def load_classifier(model_dir: str | Path) -> PreTrainedModel:
    """An exported multi-label artifact (safetensors only), in float32 and eval mode."""
    config = AutoConfig.from_pretrained(str(model_dir))
    if getattr(config, "pooling", None) == "mean":
        encoder = AutoModel.from_pretrained(
            str(model_dir), use_safetensors=True, dtype=torch.float32
        )
        pooled = MeanPooledClassifier(encoder, config.num_labels)
        pooled.classifier.load_state_dict(
            {k: v.float() for k, v in load_file(str(Path(model_dir) / HEAD_FILE)).items()}
        )
        return cast(PreTrainedModel, pooled.float().eval())
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir), use_safetensors=True, dtype=torch.float32
    )
    model.float().eval()
    return model


def load_backbone(ref: str | Path) -> PreTrainedModel:
    """The base encoder (e.g. BertModel) of a checkpoint, for embedding transfer."""
    return AutoModel.from_pretrained(str(ref))


@torch.no_grad()
def init_embeddings_from_pca(student: PreTrainedModel, source_ref: str | Path) -> None:
    """Initialise the student's word/position/type embeddings from a PCA projection of another
    model's (same vocabulary), rescaled to the source's standard deviation."""
    source = load_backbone(source_ref)
    src = source.get_input_embeddings().weight.float()
    dst_emb = student.get_input_embeddings()
    if src.shape[0] != dst_emb.weight.shape[0]:
        raise ValueError(
            f"embeddings of {source_ref} don't fit the student: vocabulary sizes differ "
            f"({src.shape[0]} vs {dst_emb.weight.shape[0]})"
        )
    k = dst_emb.weight.shape[1]
    mean = src.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(src - mean, full_matrices=False)
    proj = v[:k].T  # (source_dim, k)

    def project(matrix: torch.Tensor) -> torch.Tensor:
        out = (matrix.float() - mean) @ proj
        return out * (matrix.float().std() / out.std().clamp(min=1e-8))

    dst_emb.weight.copy_(project(src))
    s_emb, d_emb = source.embeddings, student.base_model.embeddings
    for name in ("position_embeddings", "token_type_embeddings"):
        s, d = getattr(s_emb, name, None), getattr(d_emb, name, None)
        if s is not None and d is not None:
            rows = min(s.weight.shape[0], d.weight.shape[0])
            d.weight[:rows].copy_(project(s.weight[:rows]))
    log.info(
        "initialised student embeddings from a PCA projection of %s (%d -> %d)",
        source_ref,
        src.shape[1],
        k,
    )


def encode(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> list[list[int]]:
    """Token ids per text, truncated, unpadded (padding happens per batch)."""
    out: list[list[int]] = []
    step = 2048
    for start in range(0, len(texts), step):
        enc = tokenizer(
            list(texts[start : start + step]),
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        out.extend(enc["input_ids"])
    return out


def collate(
    ids: Sequence[Sequence[int]], pad_id: int, multiple: int = 8
) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest member, rounded up to `multiple` (fewer kernel shapes)."""
    width = max(len(x) for x in ids)
    width = -(-width // multiple) * multiple
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, mega: int = 50
) -> list[list[int]]:
    """Shuffled batches of similar-length examples (less padding), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    lens = np.asarray(lengths)
    batches: list[list[int]] = []
    chunk = batch_size * mega
    for start in range(0, len(order), chunk):
        group = order[start : start + chunk]
        group = group[np.argsort(-lens[group], kind="stable")]
        batches.extend(group[i : i + batch_size].tolist() for i in range(0, len(group), batch_size))
    perm = rng.permutation(len(batches))
    return [batches[i] for i in perm]


def sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Inference batches in decreasing length order."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size].tolist()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over non-padding tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


@torch.inference_mode()
def predict(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    batch_size: int = 64,
    bf16: bool = False,
    pooled_layers: Sequence[int] = (),
    progress: bool = False,
    logits: bool = False,
) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Sigmoid probabilities (n, n_labels) (with `logits`: the logits themselves) and, for
    `pooled_layers`, mean-pooled hidden states."""
    from tqdm.auto import tqdm

    model.eval()
    ids = encode(tokenizer, texts, max_length)
    pad_id = tokenizer.pad_token_id or 0
    probs = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    pooled: dict[int, np.ndarray] = {
        layer: np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        for layer in pooled_layers
    }
    batches = list(sorted_batches([len(x) for x in ids], batch_size))
    bar = tqdm(batches, desc="predict", disable=not progress, mininterval=progress_interval())
    for batch in bar:
        inputs = collate([ids[i] for i in batch], pad_id)
        with autocast(bf16):
            out = model(**inputs, output_hidden_states=bool(pooled_layers))
        scores = out.logits.float()
        probs[batch] = (scores if logits else torch.sigmoid(scores)).numpy()
        for layer in pooled_layers:
            hidden = out.hidden_states[layer].float()
            pooled[layer][batch] = mean_pool(hidden, inputs["attention_mask"]).numpy()
    return probs, pooled


def progress_interval() -> float:
    """tqdm refresh interval: lively on a terminal, sparse in logs."""
    return 0.5 if os.isatty(2) else 30.0


def classifier_head(model: nn.Module) -> nn.Linear:
    """The linear layer that produces the label logits: `classifier` (BERT and our
    `MeanPooledClassifier`), `classifier.out_proj` (RoBERTa-style heads), else the one linear
    layer with `num_labels` outputs."""
    num_labels = model.config.num_labels
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Module) and not isinstance(head, nn.Linear):
        head = getattr(head, "out_proj", None)
    if not isinstance(head, nn.Linear):
        found = [
            m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels
        ]
        head = found[0] if len(found) == 1 else None
    if head is None or head.out_features != num_labels or head.bias is None:
        raise ValueError(
            f"{type(model).__name__}: no linear classifier head with a bias and {num_labels} "
            "outputs to fold a calibration into"
        )
    return head


@torch.no_grad()
def fold_affine_into_head(model: nn.Module, scale: np.ndarray, offset: np.ndarray) -> None:
    """Make the model's logits `scale * logits + offset` (per label) by rewriting its head:
    W' = diag(scale) W, b' = scale * b + offset."""
    head = classifier_head(model)
    s = torch.as_tensor(np.asarray(scale), dtype=torch.float64)
    o = torch.as_tensor(np.asarray(offset), dtype=torch.float64)
    weight, bias = head.weight.double(), head.bias.double()
    head.weight.copy_((weight * s[:, None]).to(head.weight.dtype))
    head.bias.copy_((bias * s + o).to(head.bias.dtype))
