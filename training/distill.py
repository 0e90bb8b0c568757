"""`distill`: train a student on alpha*BCE(labels) + (1-alpha)*soft-target loss from a teacher.

Soft-target loss for independent per-label probabilities at temperature T:
T^2 * BCE(sigmoid(z_s / T), sigmoid(z_t / T)) with z_t = logit(p_teacher). The transfer set is the
labeled training text plus, optionally, teacher-labeled augmentations and unlabeled text. An
optional pooled hidden-state term matches the student's mean-pooled layer outputs, through a
learned projection, to the teacher's (z-scored) at mapped layers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from training.augment import augment_texts
from training.baseline import out_of_fold_probs
from training.data import load_dataset
from training.fit import DataOptions, RunOptions, finish_run, load_data, pos_weight_tensor
from training.loop import LoopConfig, Trainer
from training.modeling import (
    build_classifier,
    encode,
    load_backbone,
    load_tokenizer,
    mean_pool,
    setup_torch,
)
from training.teacher import combine, teacher_hidden_size, teacher_outputs

log = logging.getLogger(__name__)


@dataclass
class DistillOptions:
    """Teacher, student and loss settings."""

    teachers: list[Path] = field(default_factory=list)
    teacher_weights: str | None = None
    tfidf_teacher: bool = False
    teacher_cache: Path | None = None
    teacher_batch_size: int = 64
    teacher_bf16: bool = False
    student: str | None = None
    student_config: str | None = None
    tokenizer: str | None = None
    init_embeddings: str | None = None
    alpha: float = 0.5
    temperature: float = 2.0
    hidden_distill: float = 0.0
    unlabeled: list[Path] = field(default_factory=list)
    augment: int = 0
    pos_weight: str | None = None


def soft_target_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, t: float
) -> torch.Tensor:
    """T^2 * BCE between tempered student and teacher per-label distributions."""
    p = teacher_probs.clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid(torch.logit(p) / t)
    return nn.functional.binary_cross_entropy_with_logits(student_logits / t, soft) * (t * t)


@torch.no_grad()
def pca_init_embeddings(student: PreTrainedModel, source_ref: str) -> None:
    """Initialise the student's word/position/type embeddings from a PCA projection of another
    model's (same vocabulary), rescaled to the source's standard deviation."""
    source = load_backbone(source_ref)
    src = source.get_input_embeddings().weight.float()
    dst_emb = student.get_input_embeddings()
    if src.shape[0] != dst_emb.weight.shape[0]:
        raise ValueError(
            "--init-embeddings: vocabulary sizes differ "
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


def _tfidf_cached(
    cache_dir: Path | None,
    train_texts: list[str],
    train_labels: np.ndarray,
    texts: list[str],
    source: np.ndarray,
    seed: int,
) -> np.ndarray:
    key = None
    if cache_dir is not None:
        digest = hashlib.sha256(train_labels.tobytes() + source.tobytes() + str(seed).encode())
        for text in [*train_texts, "\x01", *texts]:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\x00")
        key = cache_dir / f"tfidf-oof-{digest.hexdigest()[:20]}.npz"
        if key.is_file():
            with np.load(key, allow_pickle=False) as data:
                log.info("tf-idf teacher outputs from cache %s", key)
                return data["probs"]
    started = time.perf_counter()
    probs = out_of_fold_probs(train_texts, train_labels, texts, source, seed=seed)
    log.info("tf-idf teacher (5-fold, out-of-fold) in %.1fs", time.perf_counter() - started)
    if key is not None:
        key.parent.mkdir(parents=True, exist_ok=True)
        np.savez(key, probs=probs)
    return probs


def distill(
    data: DataOptions, run: RunOptions, loop: LoopConfig, opts: DistillOptions
) -> dict[str, object]:
    """Distil the teacher(s) into the student; returns validation metrics."""
    started = time.perf_counter()
    setup_torch(run.threads, loop.seed)
    train, val = load_data(data)
    labels = train.label_names
    assert train.labels is not None

    # Transfer set: labeled text, augmentations, unlabeled text.
    texts = list(train.texts)
    source = np.arange(len(texts), dtype=np.int64)
    if opts.augment > 0:
        aug, aug_source = augment_texts(train.texts, opts.augment, seed=loop.seed)
        texts += aug
        source = np.concatenate([source, aug_source])
    for path in opts.unlabeled:
        extra = load_dataset(
            path, data.text_column, require_labels=False, skip_bad_rows=data.skip_bad_rows
        )
        texts += extra.texts
        source = np.concatenate([source, np.full(len(extra), -1, dtype=np.int64)])
    n_labeled = len(train)
    log.info(
        "transfer set: %d texts (%d labeled, %d augmented/unlabeled)",
        len(texts),
        n_labeled,
        len(texts) - n_labeled,
    )

    # Teacher targets (computed once; cached on disk with --teacher-cache).
    t_started = time.perf_counter()
    members: list[np.ndarray] = []
    layer_map: list[tuple[int, int]] = []
    teacher_pooled: dict[int, np.ndarray] = {}
    student_ref = opts.student or opts.student_config
    assert student_ref is not None
    model = build_classifier(student_ref, labels, from_config=opts.student_config is not None)
    if opts.hidden_distill > 0 and opts.teachers:
        _, t_layers = teacher_hidden_size(opts.teachers[0])
        s_layers = model.config.num_hidden_layers
        layer_map = [(k, round(k * t_layers / s_layers)) for k in range(1, s_layers + 1)]
    for i, teacher in enumerate(opts.teachers):
        out = teacher_outputs(
            teacher,
            texts,
            labels=labels,
            max_length=run.max_length,
            batch_size=opts.teacher_batch_size,
            bf16=opts.teacher_bf16,
            pooled_layers=[t for _, t in layer_map] if i == 0 else (),
            cache_dir=opts.teacher_cache,
        )
        members.append(out.probs)
        if i == 0:
            teacher_pooled = out.pooled
    if opts.tfidf_teacher:
        members.append(
            _tfidf_cached(opts.teacher_cache, train.texts, train.labels, texts, source, loop.seed)
        )
    weights = (
        [float(w) for w in opts.teacher_weights.split(",")]
        if opts.teacher_weights
        else [1.0] * len(members)
    )
    soft = torch.from_numpy(combine(members, weights))
    teacher_seconds = time.perf_counter() - t_started
    hard = torch.zeros((len(texts), len(labels)), dtype=torch.float32)
    hard[:n_labeled] = torch.from_numpy(train.labels)
    has_label = torch.zeros(len(texts), dtype=torch.bool)
    has_label[:n_labeled] = True

    # Student.
    tokenizer = load_tokenizer(opts.tokenizer or student_ref)
    if opts.init_embeddings:
        pca_init_embeddings(model, opts.init_embeddings)
    modules: dict[str, nn.Module] = {"model": model}
    targets_pooled: list[torch.Tensor] = []
    if layer_map:
        t_hidden = next(iter(teacher_pooled.values())).shape[1]
        modules["projection"] = nn.ModuleList(
            nn.Linear(model.config.hidden_size, t_hidden) for _ in layer_map
        )
        for _, t in layer_map:
            feats = teacher_pooled[t].astype(np.float32)
            feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
            targets_pooled.append(torch.from_numpy(feats))
    bce = nn.BCEWithLogitsLoss(
        pos_weight=pos_weight_tensor(opts.pos_weight, train.labels, len(labels)), reduction="none"
    )
    alpha, temperature = opts.alpha, opts.temperature

    def step(inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        out = model(**inputs, output_hidden_states=bool(layer_map))
        logits = out.logits.float()
        loss = (1 - alpha) * soft_target_loss(logits, soft[index], temperature)
        labeled = has_label[index]
        if alpha > 0 and labeled.any():
            loss = loss + alpha * bce(logits[labeled], hard[index][labeled]).mean()
        if layer_map:
            projections = modules["projection"]
            for j, (s, _) in enumerate(layer_map):
                pooled = mean_pool(out.hidden_states[s].float(), inputs["attention_mask"])
                pred = projections[j](pooled)  # type: ignore[index]
                mse = nn.functional.mse_loss(pred.float(), targets_pooled[j][index])
                loss = loss + opts.hidden_distill * mse / len(layer_map)
        return loss

    token_ids = encode(tokenizer, texts, run.max_length)
    trainer = Trainer(
        modules, token_ids, tokenizer.pad_token_id or 0, step, loop, run.output_dir / "checkpoint"
    )
    if run.resume:
        trainer.load_checkpoint()
    history = trainer.train()
    if not trainer.finished:
        log.info("stopped at step %d/%d; rerun to resume", trainer.global_step, trainer.total_steps)
        return {"stopped_at_step": trainer.global_step}
    teacher_names = [str(t) for t in opts.teachers] + (
        ["tf-idf+LR (out-of-fold)"] if opts.tfidf_teacher else []
    )
    info = {
        "method": "distill (knowledge distillation)",
        "base": (
            f"{student_ref} ({'random init from config' if opts.student_config else 'pretrained'})"
            + (f", embeddings from PCA of {opts.init_embeddings}" if opts.init_embeddings else "")
        ),
        "train_data": str(data.train),
        "val_data": data.describe_validation(),
        "train_rows": len(train),
        "val_rows": len(val),
        "details": {
            "teachers": ", ".join(teacher_names),
            "teacher_weights": weights,
            "alpha": alpha,
            "temperature": temperature,
            "hidden_distill": opts.hidden_distill,
            "transfer_set": f"{len(texts)} texts ({n_labeled} labeled, {opts.augment} augmented "
            f"copies per text, {len(opts.unlabeled)} unlabeled files)",
            "epochs": loop.epochs,
            "batch_size": loop.batch_size,
            "learning_rate": loop.learning_rate,
            "max_length": run.max_length,
            "seed": loop.seed,
            "bf16_autocast": loop.bf16,
            "pos_weight": opts.pos_weight or "none",
            "teacher_seconds": round(teacher_seconds, 1),
            **run.details,
        },
        "command": run.command,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return finish_run(model, tokenizer, val, run, history, info)
