"""`distill`: train a student on alpha*BCE(labels) + (1-alpha)*soft-target loss from teachers.

In four parts: the transfer set (labeled training text plus, optionally, augmentations and
unlabeled text), the teacher targets on it (a weighted ensemble of exported teachers and the
out-of-fold TF-IDF+LR model), the loss, and the loop (`distill`) that ties them to a training run.

Soft-target loss for independent per-label probabilities at temperature T:
T^2 * BCE(sigmoid(z_s / T), sigmoid(z_t / T)) with z_t = logit(p_teacher). An optional pooled
hidden-state term matches the student's mean-pooled layer outputs, through a learned projection,
to the first teacher's (z-scored) at mapped layers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from training.augment import augment_texts
from training.data import DataOptions, TextDataset, load_dataset, load_split
from training.loop import LoopConfig
from training.modeling import (
    build_classifier,
    init_embeddings_from_pca,
    load_tokenizer,
    mean_pool,
    setup_torch,
)
from training.provenance import portable_path
from training.run import (
    Metrics,
    PosWeight,
    Provenance,
    RunOptions,
    describe_pos_weight,
    pos_weight_tensor,
    train_and_export,
)
from training.teacher import (
    TFIDF_TEACHER,
    combine,
    teacher_depth,
    teacher_outputs,
    tfidf_teacher_outputs,
)

log = logging.getLogger(__name__)

LayerMap = list[tuple[int, int]]
"""(student layer, teacher layer) pairs matched by the hidden-state term; hidden-state index 0
is the embeddings, so layers count from 1."""


@dataclass
class DistillOptions:
    """Student, teachers and loss of a distillation."""

    student: str  # hub id or local path
    student_from_config: bool = False  # random weights from `student`'s config
    tokenizer: str | None = None  # default: the student's
    init_embeddings: str | None = None  # PCA-project this model's embeddings into the student
    teachers: Sequence[Path] = ()  # exported teacher artifacts or run directories
    tfidf_teacher: bool = False  # add the out-of-fold TF-IDF+LR model to the ensemble
    teacher_weights: Sequence[float] | None = None  # per teacher, then TF-IDF; default: equal
    teacher_cache: Path | None = None  # directory caching teacher outputs per text set
    teacher_batch_size: int = 64
    teacher_bf16: bool = False
    alpha: float = 0.5  # weight of the hard-label BCE
    temperature: float = 2.0
    hidden_distill: float = 0.0  # weight of the pooled hidden-state term (first teacher only)
    unlabeled: Sequence[Path] = ()  # text files: teacher targets only
    augment: int = 0  # teacher-labeled augmented copies per training text
    pos_weight: PosWeight = None

    def __post_init__(self) -> None:
        if not self.teachers and not self.tfidf_teacher:
            raise ValueError("distill needs --teacher and/or --tfidf-teacher")
        members = len(self.teachers) + int(self.tfidf_teacher)
        if self.teacher_weights is not None and len(self.teacher_weights) != members:
            raise ValueError(
                "--teacher-weights needs one value per --teacher, then one for --tfidf-teacher: "
                f"{members}, got {len(self.teacher_weights)}"
            )

    def teacher_names(self) -> list[str]:
        """The ensemble members, as the model card names them."""
        names = [portable_path(t) for t in self.teachers]
        return names + ([TFIDF_TEACHER] if self.tfidf_teacher else [])


# -- transfer set --------------------------------------------------------------------------------
@dataclass
class TransferSet:
    """The texts the student learns from: the labeled training texts first, in order, then
    augmentations and unlabeled text (teacher targets only)."""

    texts: list[str]
    source: np.ndarray  # the training row each text derives from; -1 for unlabeled text
    n_labeled: int

    def describe(self, augment: int, unlabeled_files: int) -> str:
        """For the model card."""
        return (
            f"{len(self.texts)} texts ({self.n_labeled} labeled, {augment} augmented "
            f"copies per text, {unlabeled_files} unlabeled files)"
        )


def build_transfer_set(
    train: TextDataset,
    *,
    augment: int,
    unlabeled: Sequence[Path],
    text_column: str,
    skip_bad_rows: bool,
    seed: int,
) -> TransferSet:
    """Training texts, `augment` augmented copies of each, then the texts of `unlabeled` files."""
    texts = list(train.texts)
    sources = [np.arange(len(texts), dtype=np.int64)]
    if augment > 0:
        augmented, augmented_source = augment_texts(train.texts, augment, seed=seed)
        texts += augmented
        sources.append(augmented_source)
    for path in unlabeled:
        extra = load_dataset(path, text_column, require_labels=False, skip_bad_rows=skip_bad_rows)
        texts += extra.texts
        sources.append(np.full(len(extra), -1, dtype=np.int64))
    transfer = TransferSet(texts=texts, source=np.concatenate(sources), n_labeled=len(train))
    log.info(
        "transfer set: %d texts (%d labeled, %d augmented/unlabeled)",
        len(texts),
        transfer.n_labeled,
        len(texts) - transfer.n_labeled,
    )
    return transfer


# -- teacher targets -----------------------------------------------------------------------------
@dataclass
class TeacherTargets:
    """What the student is taught on each transfer text."""

    probs: torch.Tensor  # (n_texts, n_labels): the ensemble's probabilities
    pooled: list[torch.Tensor]  # per mapped layer: the first teacher's pooled states, z-scored
    weights: list[float]  # the ensemble weights used
    seconds: float


def map_layers(student_layers: int, teacher_layers: int) -> LayerMap:
    """Each student layer paired with the teacher layer at the same relative depth."""
    return [(k, round(k * teacher_layers / student_layers)) for k in range(1, student_layers + 1)]


def teacher_targets(
    opts: DistillOptions,
    transfer: TransferSet,
    train: TextDataset,
    *,
    max_length: int,
    seed: int,
    layers: LayerMap,
) -> TeacherTargets:
    """Score the transfer set with every teacher and combine them (each cached with
    `opts.teacher_cache`); pooled hidden states come from the first teacher at `layers`."""
    started = time.perf_counter()
    assert train.labels is not None
    members: list[np.ndarray] = []
    pooled: dict[int, np.ndarray] = {}
    for i, teacher in enumerate(opts.teachers):
        out = teacher_outputs(
            teacher,
            transfer.texts,
            labels=train.label_names,
            max_length=max_length,
            batch_size=opts.teacher_batch_size,
            bf16=opts.teacher_bf16,
            pooled_layers=[t for _, t in layers] if i == 0 else (),
            cache_dir=opts.teacher_cache,
        )
        members.append(out.probs)
        if i == 0:
            pooled = out.pooled
    if opts.tfidf_teacher:
        members.append(
            tfidf_teacher_outputs(
                train.texts,
                train.labels,
                transfer.texts,
                transfer.source,
                seed=seed,
                cache_dir=opts.teacher_cache,
            )
        )
    weights = [float(w) for w in opts.teacher_weights or [1.0] * len(members)]
    return TeacherTargets(
        probs=torch.from_numpy(combine(members, weights)),
        pooled=[torch.from_numpy(_zscore(pooled[t])) for _, t in layers],
        weights=weights,
        seconds=time.perf_counter() - started,
    )


def _zscore(features: np.ndarray) -> np.ndarray:
    features = features.astype(np.float32)
    return (features - features.mean(0)) / (features.std(0) + 1e-6)


# -- loss ----------------------------------------------------------------------------------------
def soft_target_loss(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, t: float
) -> torch.Tensor:
    """T^2 * BCE between tempered student and teacher per-label distributions."""
    p = teacher_probs.clamp(1e-6, 1 - 1e-6)
    soft = torch.sigmoid(torch.logit(p) / t)
    return nn.functional.binary_cross_entropy_with_logits(student_logits / t, soft) * (t * t)


class DistillationLoss:
    """The training step's loss on a batch of transfer-set rows: soft targets on every row, BCE
    on the labeled ones, and (with `layers`) the pooled hidden-state term through `projection`."""

    def __init__(
        self,
        model: PreTrainedModel,
        targets: TeacherTargets,
        transfer: TransferSet,
        train_labels: np.ndarray,
        opts: DistillOptions,
        layers: LayerMap,
        projection: nn.ModuleList | None,
    ) -> None:
        self.model = model
        self.targets = targets
        self.opts = opts
        self.layers = layers
        self.projection = projection
        n = len(transfer.texts)
        self.hard = torch.zeros((n, train_labels.shape[1]), dtype=torch.float32)
        self.hard[: transfer.n_labeled] = torch.from_numpy(train_labels)
        self.has_label = torch.zeros(n, dtype=torch.bool)
        self.has_label[: transfer.n_labeled] = True
        self.bce = nn.BCEWithLogitsLoss(
            pos_weight=pos_weight_tensor(opts.pos_weight, train_labels), reduction="none"
        )

    def __call__(self, inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        alpha = self.opts.alpha
        out = self.model(**inputs, output_hidden_states=bool(self.layers))
        logits = out.logits.float()
        loss = (1 - alpha) * soft_target_loss(
            logits, self.targets.probs[index], self.opts.temperature
        )
        labeled = self.has_label[index]
        if alpha > 0 and labeled.any():
            loss = loss + alpha * self.bce(logits[labeled], self.hard[index][labeled]).mean()
        if self.projection is not None:
            for j, (s, _) in enumerate(self.layers):
                pooled = mean_pool(out.hidden_states[s].float(), inputs["attention_mask"])
                predicted = self.projection[j](pooled).float()
                mse = nn.functional.mse_loss(predicted, self.targets.pooled[j][index])
                loss = loss + self.opts.hidden_distill * mse / len(self.layers)
        return loss


# -- loop ----------------------------------------------------------------------------------------
def distill(data: DataOptions, run: RunOptions, loop: LoopConfig, opts: DistillOptions) -> Metrics:
    """Distil the teacher(s) into the student; returns validation metrics (or where a run
    stopped by `loop.stop_after_steps` stopped)."""
    started = time.perf_counter()
    setup_torch(run.threads, loop.seed)
    train, val = load_split(data)
    assert train.labels is not None
    model = build_classifier(opts.student, train.label_names, from_config=opts.student_from_config)
    layers: LayerMap = []
    if opts.hidden_distill > 0 and opts.teachers:
        layers = map_layers(model.config.num_hidden_layers, teacher_depth(opts.teachers[0]))
    transfer = build_transfer_set(
        train,
        augment=opts.augment,
        unlabeled=opts.unlabeled,
        text_column=data.text_column,
        skip_bad_rows=data.skip_bad_rows,
        seed=loop.seed,
    )
    targets = teacher_targets(
        opts, transfer, train, max_length=run.max_length, seed=loop.seed, layers=layers
    )
    tokenizer = load_tokenizer(opts.tokenizer or opts.student)
    if opts.init_embeddings:
        init_embeddings_from_pca(model, opts.init_embeddings)
    projection = None
    if layers:
        teacher_hidden = targets.pooled[0].shape[1]
        projection = nn.ModuleList(
            nn.Linear(model.config.hidden_size, teacher_hidden) for _ in layers
        )
    loss = DistillationLoss(model, targets, transfer, train.labels, opts, layers, projection)
    return train_and_export(
        data,
        run,
        loop,
        train=train,
        val=val,
        model=model,
        tokenizer=tokenizer,
        texts=transfer.texts,
        step=loss,
        provenance=_provenance(opts, transfer, targets),
        started=started,
        extra_modules={"projection": projection} if projection is not None else None,
    )


def _provenance(opts: DistillOptions, transfer: TransferSet, targets: TeacherTargets) -> Provenance:
    base = portable_path(opts.student)
    base += " (random init from config)" if opts.student_from_config else " (pretrained)"
    if opts.init_embeddings:
        base += f", embeddings from PCA of {portable_path(opts.init_embeddings)}"
    return Provenance(
        method="distill (knowledge distillation)",
        base=base,
        details={
            "teachers": ", ".join(opts.teacher_names()),
            "teacher_weights": targets.weights,
            "alpha": opts.alpha,
            "temperature": opts.temperature,
            "hidden_distill": opts.hidden_distill,
            "transfer_set": transfer.describe(opts.augment, len(opts.unlabeled)),
            "pos_weight": describe_pos_weight(opts.pos_weight),
            "teacher_seconds": round(targets.seconds, 1),
        },
    )
