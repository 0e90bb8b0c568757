"""`fit`: fine-tune a sequence-classification model on multi-label data."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from training.data import TextDataset, load_train_val
from training.evaluate import choose_thresholds, compute_metrics, write_report
from training.export import save_artifact
from training.loop import LoopConfig, Trainer
from training.modeling import build_classifier, encode, load_tokenizer, predict, setup_torch

log = logging.getLogger(__name__)


@dataclass
class DataOptions:
    """Where the labeled data comes from."""

    train: Path
    val: Path | None = None
    text_column: str = "comment_text"
    label_columns: list[str] | None = None
    skip_bad_rows: bool = False
    test_size: float = 0.2
    split_seed: int = 42

    def describe_validation(self) -> str:
        """Where the validation rows come from, for the model card."""
        if self.val:
            return str(self.val)
        return (
            f"{int(self.test_size * 100)}% split of {self.train.name} "
            f"(random_state={self.split_seed})"
        )


@dataclass
class RunOptions:
    """Output, model-size and threshold settings common to fit and distill."""

    output_dir: Path
    max_length: int = 128
    threshold_method: str = "f1"
    model_name: str | None = None
    fp16_export: bool = False
    resume: bool = True
    threads: int = 0
    eval_batch_size: int = 64
    pos_weight: list[float] | None = None
    details: dict[str, object] = field(default_factory=dict)
    command: str = "moderation-train"  # the command line, for the model card


def load_data(opts: DataOptions) -> tuple[TextDataset, TextDataset]:
    """Training and validation sets, logged."""
    train, val = load_train_val(
        opts.train,
        opts.val,
        opts.text_column,
        opts.label_columns,
        skip_bad_rows=opts.skip_bad_rows,
        test_size=opts.test_size,
        seed=opts.split_seed,
    )
    if train.skipped_rows or val.skipped_rows:
        log.warning(
            "skipped bad rows: %d train, %d validation", train.skipped_rows, val.skipped_rows
        )
    log.info("data: %d train rows, %d validation rows", len(train), len(val))
    return train, val


def pos_weight_tensor(spec: str | None, labels: np.ndarray, n_labels: int) -> torch.Tensor | None:
    """BCE positive-class weights: None, `auto` (sqrt of neg/pos, capped at 10) or a list."""
    if not spec:
        return None
    if spec == "auto":
        pos = labels.mean(0).clip(1e-4, 1.0)
        return torch.tensor(np.minimum(np.sqrt((1 - pos) / pos), 10.0), dtype=torch.float32)
    values = [float(v) for v in spec.split(",")]
    if len(values) != n_labels:
        raise ValueError(f"--pos-weight needs {n_labels} comma-separated values or 'auto'")
    return torch.tensor(values, dtype=torch.float32)


def finish_run(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    val: TextDataset,
    run: RunOptions,
    history: list[dict[str, float]],
    info: dict[str, object],
) -> dict[str, object]:
    """Choose thresholds on validation, write the artifact (`run/model`) and its report."""
    labels = list(val.label_names)
    probs, _ = predict(
        model, tokenizer, val.texts, max_length=run.max_length, batch_size=run.eval_batch_size
    )
    assert val.labels is not None
    thresholds = choose_thresholds(val.labels, probs, labels, run.threshold_method)
    metrics = compute_metrics(val.labels, probs, labels, thresholds)
    info = {**info, "metrics": metrics}
    model_dir = run.output_dir / "model"
    save_artifact(
        model,
        tokenizer,
        model_dir,
        thresholds=thresholds,
        info=info,
        model_name=run.model_name,
        fp16=run.fp16_export,
    )
    (run.output_dir / "history.json").write_text(json.dumps(history) + "\n")
    (model_dir / "history.json").write_text(json.dumps(history) + "\n")
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
        model_dir,
    )
    return metrics


def fit(
    data: DataOptions,
    run: RunOptions,
    loop: LoopConfig,
    *,
    base_model: str,
    tokenizer_ref: str | None = None,
    from_config: bool | None = None,
    pos_weight: str | None = None,
    pooling: str = "cls",
) -> dict[str, object]:
    """Fine-tune `base_model` with BCE on the labeled data; returns validation metrics."""
    started = time.perf_counter()
    setup_torch(run.threads, loop.seed)
    train, val = load_data(data)
    labels = train.label_names
    tokenizer = load_tokenizer(tokenizer_ref or base_model)
    model = build_classifier(base_model, labels, from_config=from_config, pooling=pooling)
    token_ids = encode(tokenizer, train.texts, run.max_length)
    assert train.labels is not None
    targets = torch.from_numpy(train.labels)
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=pos_weight_tensor(pos_weight, train.labels, len(labels))
    )

    def step(inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        logits = model(**inputs).logits.float()
        return loss_fn(logits, targets[index])

    trainer = Trainer(
        {"model": model},
        token_ids,
        tokenizer.pad_token_id or 0,
        step,
        loop,
        run.output_dir / "checkpoint",
    )
    if run.resume:
        trainer.load_checkpoint()
    history = trainer.train()
    if not trainer.finished:
        log.info("stopped at step %d/%d; rerun to resume", trainer.global_step, trainer.total_steps)
        return {"stopped_at_step": trainer.global_step}
    info = {
        "method": "fit (BCE fine-tuning)",
        "base": base_model + (" (random init from config)" if from_config else ""),
        "train_data": str(data.train),
        "val_data": data.describe_validation(),
        "train_rows": len(train),
        "val_rows": len(val),
        "details": {
            "epochs": loop.epochs,
            "batch_size": loop.batch_size,
            "learning_rate": loop.learning_rate,
            "max_length": run.max_length,
            "seed": loop.seed,
            "bf16_autocast": loop.bf16,
            "pos_weight": pos_weight or "none",
            "pooling": pooling,
            **run.details,
        },
        "command": run.command,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return finish_run(model, tokenizer, val, run, history, info)
