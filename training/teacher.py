"""Teacher outputs for distillation: per-label probabilities (and pooled hidden states) of an
exported artifact or of the TF-IDF+LR model, computed once and optionally cached on disk
(`.npz`, no pickles)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from schemas.artifact import WEIGHTS_FILE, weights_version
from training.artifact_files import resolve_model_dir

log = logging.getLogger(__name__)

TFIDF_TEACHER = "tf-idf+LR (out-of-fold)"  # how the TF-IDF ensemble member is named on cards


@dataclass
class TeacherOutputs:
    """Probabilities (n, n_labels) and mean-pooled hidden states by layer index."""

    probs: np.ndarray
    pooled: dict[int, np.ndarray]


def _digest(header: bytes, texts: Iterable[str]) -> str:
    """A cache key over `header` and every text (NUL-separated)."""
    digest = hashlib.sha256(header)
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x00")
    return digest.hexdigest()[:20]


def _cached(
    cache_file: Path | None, compute: Callable[[], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The arrays stored in `cache_file`, or `compute()`'s, then stored there (atomically)."""
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file, allow_pickle=False) as data:
            log.info("teacher outputs from cache %s", cache_file)
            return {name: data[name] for name in data.files}
    arrays = compute()
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(cache_file)
    return arrays


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
    model_dir = resolve_model_dir(teacher)
    cache_file = None
    if cache_dir is not None:
        header = f"{weights_version(model_dir / WEIGHTS_FILE)}|{max_length}|"
        header += ",".join(map(str, pooled_layers)) + "|"
        key = _digest(header.encode(), texts)
        cache_file = cache_dir / f"teacher-{model_dir.resolve().name}-{key}.npz"

    def compute() -> dict[str, np.ndarray]:
        from training.modeling import load_classifier, load_tokenizer, predict

        model = load_classifier(model_dir)
        teacher_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        missing = [label for label in labels if label not in teacher_labels]
        if missing:
            raise ValueError(f"teacher {model_dir} lacks label(s) {', '.join(missing)}")
        started = time.perf_counter()
        probs, pooled = predict(
            model,
            load_tokenizer(model_dir),
            texts,
            max_length=max_length,
            batch_size=batch_size,
            bf16=bf16,
            pooled_layers=pooled_layers,
            progress=True,
        )
        log.info(
            "teacher %s scored %d texts in %.1fs",
            model_dir,
            len(texts),
            time.perf_counter() - started,
        )
        order = [teacher_labels.index(label) for label in labels]
        return {
            "probs": probs[:, order],
            **{f"pooled_{k}": v.astype(np.float16) for k, v in pooled.items()},
        }

    arrays = _cached(cache_file, compute)
    return TeacherOutputs(
        probs=arrays["probs"],
        pooled={layer: arrays[f"pooled_{layer}"] for layer in pooled_layers},
    )


def tfidf_teacher_outputs(
    train_texts: Sequence[str],
    train_labels: np.ndarray,
    texts: Sequence[str],
    source: np.ndarray,
    *,
    seed: int,
    cache_dir: Path | None = None,
) -> np.ndarray:
    """TF-IDF+LR probabilities for `texts`, out-of-fold by `source` row (no label leakage:
    see `training.baseline.out_of_fold_probs`)."""
    from training.baseline import out_of_fold_probs

    cache_file = None
    if cache_dir is not None:
        header = train_labels.tobytes() + source.tobytes() + str(seed).encode()
        key = _digest(header, [*train_texts, "\x01", *texts])
        cache_file = cache_dir / f"tfidf-oof-{key}.npz"

    def compute() -> dict[str, np.ndarray]:
        started = time.perf_counter()
        probs = out_of_fold_probs(train_texts, train_labels, texts, source, seed=seed)
        log.info("tf-idf teacher (5-fold, out-of-fold) in %.1fs", time.perf_counter() - started)
        return {"probs": probs}

    return _cached(cache_file, compute)["probs"]


def teacher_depth(teacher: Path) -> int:
    """Number of hidden layers of an exported teacher."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(str(resolve_model_dir(teacher))).num_hidden_layers)


def combine(probs: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """Weighted mean of ensemble members' probabilities."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(probs) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("teacher weights must be non-negative, one per teacher, not all zero")
    w = w / w.sum()
    return sum(wi * p.astype(np.float64) for wi, p in zip(w, probs, strict=True)).astype(np.float32)
