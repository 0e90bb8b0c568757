"""A training run, shared by `fit` and `distill`: the run directory, checkpoint/resume/stop
around the training loop, and what follows a finished schedule (thresholds chosen on
validation, the artifact, the report, the provenance written to the model card).

Run directory layout: `checkpoint/` (resume state), `model/` (the exported artifact), `eval/`
(validation report), `history.json` (loss per logged step), `val_probs.npy`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.artifact_files import HISTORY_FILE
from training.artifact_writer import save_artifact
from training.collapse import check_collapse, collapse_message, collapse_record
from training.data import DataOptions, TextDataset, skipped_total
from training.evaluate import (
    Metrics,
    ThresholdRule,
    choose_thresholds,
    compute_metrics,
    write_report,
)
from training.loop import LoopConfig, StepFn, TrainingLoop
from training.modeling import encode, predict
from training.provenance import portable_path

log = logging.getLogger(__name__)

PosWeight = Literal["auto"] | Sequence[float] | None
"""BCE positive-class weights: none, `auto` (from label frequencies) or one per label."""


@dataclass
class RunOptions:
    """The run directory and the settings around the training loop common to fit and distill."""

    output_dir: Path
    max_length: int = 128  # tokens per text, in training and validation
    thresholds: ThresholdRule = "f1"
    model_name: str | None = None  # default: the artifact directory's name
    fp16_export: bool = False
    resume: bool = True  # continue from `checkpoint/` when it holds a checkpoint
    threads: int = 0  # torch threads; 0 = torch's default
    eval_batch_size: int = 64
    command: str | None = None  # how the run was started, for the model card

    @property
    def checkpoint_dir(self) -> Path:
        return self.output_dir / "checkpoint"

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "model"


@dataclass
class Provenance:
    """What the model card says about how a model was made, beyond data and loop settings."""

    method: str
    base: str  # the base model or initialisation
    details: dict[str, Any] = field(default_factory=dict)


def pos_weight_tensor(spec: PosWeight, labels: np.ndarray) -> torch.Tensor | None:
    """BCE positive-class weights for `labels` (n, n_labels): None, `auto` (sqrt of neg/pos,
    capped at 10) or one value per label."""
    if spec is None:
        return None
    if spec == "auto":
        pos = np.nan_to_num(np.nanmean(labels, 0), nan=0.0).clip(1e-4, 1.0)  # NaN: not judged
        return torch.tensor(np.minimum(np.sqrt((1 - pos) / pos), 10.0), dtype=torch.float32)
    values = [float(v) for v in spec]
    if len(values) != labels.shape[1]:
        raise ValueError(f"--pos-weight needs {labels.shape[1]} comma-separated values or 'auto'")
    return torch.tensor(values, dtype=torch.float32)


def label_positive_rates(data: TextDataset) -> dict[str, float]:
    """Share of positive rows per label (the model card's limitations name the rare ones)."""
    assert data.labels is not None
    judged = ~np.isnan(data.labels)  # NaN: not judged (moderator feedback)
    counts = judged.sum(0)
    sums = np.where(judged, data.labels, 0.0).sum(0)
    rates = np.divide(sums, counts, out=np.zeros(len(data.label_names)), where=counts > 0)
    pairs = zip(data.label_names, rates, strict=True)
    return {label: round(float(rate), 4) for label, rate in pairs}


def describe_pos_weight(spec: PosWeight) -> str | list[float]:
    """`spec` as the model card states it."""
    return "none" if spec is None else spec if isinstance(spec, str) else list(spec)


def train_and_export(
    data: DataOptions,
    run: RunOptions,
    loop: LoopConfig,
    *,
    train: TextDataset,
    val: TextDataset,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    step: StepFn,
    provenance: Provenance,
    started: float,
    extra_modules: dict[str, nn.Module] | None = None,
    unjudged_thresholds: dict[str, float] | None = None,
) -> Metrics:
    """Train `model` (and `extra_modules`, checkpointed but not exported) with `step` over
    `texts`, resuming from the run's checkpoint; once the schedule is done, export and report.

    Returns validation metrics, or `{"stopped_at_step": n}` when `loop.stop_after_steps`
    stopped the run early (rerun to resume). `started` (a `time.perf_counter()` reading) dates
    the run's start for the recorded training time.
    """
    training = TrainingLoop(
        {"model": model, **(extra_modules or {})},
        encode(tokenizer, texts, run.max_length),
        tokenizer.pad_token_id or 0,
        step,
        loop,
        run.checkpoint_dir,
    )
    if run.resume:
        training.load_checkpoint()
    history = training.train()
    if not training.finished:
        log.info(
            "stopped at step %d/%d; rerun to resume", training.global_step, training.total_steps
        )
        return {"stopped_at_step": training.global_step}
    info = {
        "method": provenance.method,
        "base": provenance.base,
        "train_data": portable_path(data.train),
        "val_data": data.describe_validation(),
        "train_rows": len(train),
        "val_rows": len(val),
        "skipped_rows": skipped_total(train, val),
        "label_positive_rates": label_positive_rates(train),
        "details": {
            **provenance.details,
            "epochs": loop.epochs,
            "batch_size": loop.batch_size,
            "learning_rate": loop.learning_rate,
            "max_length": run.max_length,
            "seed": loop.seed,
            "bf16_autocast": loop.bf16,
        },
        "command": run.command,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return finish_run(model, tokenizer, val, run, history, info, unjudged_thresholds)


def finish_run(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    val: TextDataset,
    run: RunOptions,
    history: list[dict[str, float]],
    info: dict[str, Any],
    unjudged_thresholds: dict[str, float] | None = None,
) -> Metrics:
    """Choose thresholds on validation, write the artifact (`run/model`) and its report.
    `unjudged_thresholds`: for labels no validation row judges (see `choose_thresholds`).
    The validation figures of `training.collapse` go into the metrics (`collapse`, also in
    the artifact's training info, which export reads); a collapsed model is written (for
    inspection, and resuming with more epochs) but logged as a warning."""
    assert val.labels is not None
    labels = list(val.label_names)
    probs, _ = predict(
        model, tokenizer, val.texts, max_length=run.max_length, batch_size=run.eval_batch_size
    )
    thresholds = choose_thresholds(val.labels, probs, labels, run.thresholds, unjudged_thresholds)
    metrics = compute_metrics(val.labels, probs, labels, thresholds)
    metrics["skipped_rows"] = info.get("skipped_rows", 0)
    check = check_collapse(val.labels, probs, labels)
    metrics["collapse"] = check.as_dict()
    if check.collapsed:  # the card says so too
        warning = collapse_message(check, "This model", "its validation split")
        info = {**info, "notes": [*(info.get("notes") or []), f"**Warning:** {warning}"]}
    save_artifact(
        model,
        tokenizer,
        run.model_dir,
        thresholds=thresholds,
        info={**info, "metrics": metrics},
        model_name=run.model_name,
        fp16=run.fp16_export,
        collapsed=collapse_record(check, "its validation split"),
    )
    for history_file in (run.output_dir / HISTORY_FILE, run.model_dir / HISTORY_FILE):
        history_file.write_text(json.dumps(history) + "\n")
    write_report(
        metrics,
        val.labels,
        probs,
        labels,
        run.output_dir / "eval",
        title="Validation",
        history=history,
    )
    np.save(run.output_dir / "val_probs.npy", probs)
    log.info(
        "validation: mean ROC-AUC %.4f, BCE %.4f -> %s",
        metrics["mean_roc_auc"] or float("nan"),
        metrics["bce"],
        run.model_dir,
    )
    if check.collapsed:
        log.warning(
            "%s",
            collapse_message(check, str(run.model_dir), "its validation split")
            + " (export refuses it without --force)",
        )
    return metrics
