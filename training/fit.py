"""`fit`: fine-tune a sequence-classification model with BCE on multi-label data.

Label cells left empty (not judged: moderator feedback) are masked out of the loss. With
`init_from` (a served artifact or run directory) the model, its tokenizer and its labels are the
start, and once trained the candidate is compared with that model on the held-out rows
(`training.fit_compare`). `mix` adds a share of rows drawn from another labeled file (the
original training data) to the training rows, against forgetting.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from training.data import DataError, DataOptions, TextDataset, load_dataset, load_split
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

log = logging.getLogger(__name__)

Mix = tuple[Path, float]
"""(labeled file, share of the training rows drawn from it)."""


def parse_mix(value: str) -> Mix:
    """`FILE:FRACTION` with 0 < FRACTION < 1 (`ValueError`, one line, otherwise)."""
    path, sep, fraction = value.rpartition(":")
    try:
        number = float(fraction)
    except ValueError:
        number = float("nan")
    if not sep or not path or not 0.0 < number < 1.0:
        raise ValueError(
            f"--mix: expected ORIGINAL.csv:FRACTION with 0 < FRACTION < 1, got {value!r}"
        )
    return Path(path), number


def masked_bce(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None
) -> torch.Tensor:
    """Mean BCE over the judged cells (NaN targets: not judged, no loss); on fully labeled rows
    this is `BCEWithLogitsLoss(pos_weight=...)` exactly."""
    judged = ~torch.isnan(targets)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.nan_to_num(targets, nan=0.0), pos_weight=pos_weight, reduction="none"
    )
    return (loss * judged).sum() / judged.sum().clamp(min=1)


def mix_rows(train: TextDataset, mix: Mix, seed: int) -> TextDataset:
    """`train` plus rows drawn at random from `mix`'s file, so that they make `mix`'s share of
    the result (at most all of that file's rows)."""
    path, share = mix
    original = load_dataset(path, label_columns=train.label_names, allow_missing_labels=True)
    wanted = round(len(train) * share / (1.0 - share))
    take = min(wanted, len(original))
    if take < wanted:
        log.warning(
            "--mix: %s has %d rows, fewer than the %d asked; all are used", path, take, wanted
        )
    chosen = np.sort(np.random.default_rng(seed).choice(len(original), size=take, replace=False))
    extra = original.subset(chosen)
    assert train.labels is not None and extra.labels is not None
    log.info("--mix: %d rows of %s added to %d training rows", take, path.name, len(train))
    return TextDataset(
        texts=train.texts + extra.texts,
        labels=np.concatenate([train.labels, extra.labels]),
        label_names=list(train.label_names),
        ids=train.ids + extra.ids,
        skipped_rows=train.skipped_rows,
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
    init_from: Path | None = None,
    mix: Mix | None = None,
) -> Metrics:
    """Fine-tune `base_model` (hub id or local path) with BCE; returns validation metrics.

    `tokenizer` defaults to the base model's. `from_config=True` starts from random weights
    built from the base's config; None does so only for a local directory without weights.
    `pooling="mean"` trains a mean-pooled teacher (see `MeanPooledClassifier`). `init_from`:
    start from that artifact (its weights, tokenizer and labels; `base_model` is ignored) and
    compare the candidate with it on the validation rows (`metrics["candidate_vs_current"]`).
    `mix`: add rows of another labeled file to the training rows only.
    """
    started = time.perf_counter()
    setup_torch(run.threads, loop.seed)
    current = None
    starting_thresholds: dict[str, float] | None = None
    if init_from is not None:
        from schemas.artifact import read_contract
        from training.artifact_files import resolve_model_dir

        current = resolve_model_dir(init_from)
        contract = read_contract(current)
        labels = list(contract.labels)
        # feedback often judges one label: the others keep the served model's thresholds
        starting_thresholds = dict(contract.label_thresholds)
        if data.label_columns and sorted(data.label_columns) != sorted(labels):
            raise DataError(
                f"--label-columns {','.join(data.label_columns)} are not the labels of "
                f"--init-from {init_from} ({','.join(labels)})"
            )
        data = replace(data, label_columns=labels)
        base_model, tokenizer, from_config = str(current), tokenizer or str(current), False
    data = replace(data, allow_missing_labels=True)
    train, val = load_split(data)
    assert train.labels is not None and val.labels is not None
    if not (~np.isnan(train.labels)).any():
        raise DataError(f"{data.train}: no label is judged in any training row")
    unjudged = int(np.isnan(train.labels).sum())
    if unjudged:
        log.info("%d label cells not judged: masked out of the loss", unjudged)
    if mix is not None:
        train = mix_rows(train, mix, loop.seed)
    random_init = from_config if from_config is not None else not has_weights(base_model)
    model = build_classifier(
        base_model, train.label_names, from_config=from_config, pooling=pooling
    )
    targets = torch.from_numpy(train.labels)
    weights = pos_weight_tensor(pos_weight, train.labels)

    def step(inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        return masked_bce(model(**inputs).logits.float(), targets[index], weights)

    details: dict[str, object] = {"pos_weight": describe_pos_weight(pos_weight), "pooling": pooling}
    if unjudged:
        details["unjudged_label_cells"] = unjudged
    if mix is not None:
        details["mix"] = f"{portable_path(mix[0])}: {mix[1]:.0%} of the training rows"
    provenance = Provenance(
        method="fit (BCE fine-tuning)",
        base=portable_path(base_model)
        + (" (random init from config)" if random_init else "")
        + (" (fine-tuned from the served artifact)" if current is not None else ""),
        details=details,
    )
    metrics = train_and_export(
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
        unjudged_thresholds=starting_thresholds,
    )
    if current is not None and "stopped_at_step" not in metrics:
        from training.fit_compare import compare_with_current

        metrics["candidate_vs_current"] = compare_with_current(current, run, val)
    return metrics
