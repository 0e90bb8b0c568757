"""Teacher outputs for distillation: per-label probabilities (and pooled hidden states) of an
exported artifact, computed once and optionally cached on disk (`.npz`, no pickles)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.export import resolve_model_dir, weights_sha256

log = logging.getLogger(__name__)


@dataclass
class TeacherOutputs:
    """Probabilities (n, n_labels) and mean-pooled hidden states by layer index."""

    probs: np.ndarray
    pooled: dict[int, np.ndarray]


def _cache_key(
    model_dir: Path, texts: Sequence[str], max_length: int, layers: Sequence[int]
) -> str:
    digest = hashlib.sha256()
    digest.update(weights_sha256(model_dir).encode())
    digest.update(f"|{max_length}|{','.join(map(str, layers))}|".encode())
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


def teacher_outputs(
    teacher: Path,
    texts: Sequence[str],
    *,
    labels: Sequence[str],
    max_length: int = 128,
    batch_size: int = 64,
    bf16: bool = False,
    pooled_layers: Sequence[int] = (),
    cache_dir: Path | None = None,
) -> TeacherOutputs:
    """Score `texts` with an exported teacher; labels must match the student's, by name."""
    from training.modeling import load_classifier, load_tokenizer, predict

    model_dir = resolve_model_dir(teacher)
    cache_file = None
    if cache_dir is not None:
        key = _cache_key(model_dir, texts, max_length, pooled_layers)
        cache_file = cache_dir / f"teacher-{model_dir.resolve().name}-{key}.npz"
        if cache_file.is_file():
            with np.load(cache_file, allow_pickle=False) as data:
                log.info("teacher outputs from cache %s", cache_file)
                return TeacherOutputs(
                    probs=data["probs"],
                    pooled={layer: data[f"pooled_{layer}"] for layer in pooled_layers},
                )
    model = load_classifier(model_dir)
    tokenizer = load_tokenizer(model_dir)
    teacher_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    missing = [label for label in labels if label not in teacher_labels]
    if missing:
        raise ValueError(f"teacher {model_dir} lacks label(s) {', '.join(missing)}")
    started = time.perf_counter()
    probs, pooled = predict(
        model,
        tokenizer,
        texts,
        max_length=max_length,
        batch_size=batch_size,
        bf16=bf16,
        pooled_layers=pooled_layers,
        progress=True,
    )
    order = [teacher_labels.index(label) for label in labels]
    probs = probs[:, order]
    log.info(
        "teacher %s scored %d texts in %.1fs", model_dir, len(texts), time.perf_counter() - started
    )
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        arrays = {
            "probs": probs,
            **{f"pooled_{k}": v.astype(np.float16) for k, v in pooled.items()},
        }
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache_file)
    return TeacherOutputs(probs=probs, pooled=pooled)


def teacher_hidden_size(teacher: Path) -> tuple[int, int]:
    """(hidden size, number of layers) of an exported teacher."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(resolve_model_dir(teacher)))
    return int(config.hidden_size), int(config.num_hidden_layers)


def combine(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of ensemble members' probabilities."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(probs) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("teacher weights must be non-negative, one per teacher, not all zero")
    w = w / w.sum()
    return sum(wi * p.astype(np.float64) for wi, p in zip(w, probs, strict=True)).astype(np.float32)
