"""`fit`: fine-tune a sequence-classification model with BCE on multi-label data."""

from __future__ import annotations

import time

import torch

from training.data import DataOptions, load_split
from training.loop import LoopConfig
from training.modeling import Pooling, build_classifier, has_weights, load_tokenizer, setup_torch
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


def fit(
    data: DataOptions,
    run: RunOptions,
    loop: LoopConfig,
    *,
    base_model: str,
    tokenizer: str | None = None,
    from_config: bool | None = None,
    pos_weight: PosWeight = None,
    pooling: Pooling = "cls",
) -> Metrics:
    """Fine-tune `base_model` (hub id or local path) with BCE; returns validation metrics.

    `tokenizer` defaults to the base model's. `from_config=True` starts from random weights
    built from the base's config; None does so only for a local directory without weights.
    `pooling="mean"` trains a mean-pooled teacher (see `MeanPooledClassifier`).
    """
    started = time.perf_counter()
    setup_torch(run.threads, loop.seed)
    train, val = load_split(data)
    assert train.labels is not None
    random_init = from_config if from_config is not None else not has_weights(base_model)
    model = build_classifier(
        base_model, train.label_names, from_config=from_config, pooling=pooling
    )
    targets = torch.from_numpy(train.labels)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight_tensor(pos_weight, train.labels))

    def step(inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(**inputs).logits.float(), targets[index])

    provenance = Provenance(
        method="fit (BCE fine-tuning)",
        base=portable_path(base_model) + (" (random init from config)" if random_init else ""),
        details={"pos_weight": describe_pos_weight(pos_weight), "pooling": pooling},
    )
    return train_and_export(
        data,
        run,
        loop,
        train=train,
        val=val,
        model=model,
        tokenizer=load_tokenizer(tokenizer or base_model),
        texts=train.texts,
        step=step,
        provenance=provenance,
        started=started,
    )
