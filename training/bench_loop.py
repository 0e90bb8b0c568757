"""Training-loop benchmark (`make bench-training`): our plain loop vs the HF `Trainer`.

Both train the same randomly initialised model from the same weights on the same pre-tokenised
rows, one epoch each: AdamW, linear warmup/decay, gradient clipping at 1.0, length-grouped
batches padded per batch to a multiple of 8, flush-denormal, the same thread count, fp32 and bf16
autocast. Runs alternate (A B B A ...) so machine noise hits both; the figure is training
examples per second over the `train()` call alone (the plain loop's closing checkpoint write is
counted against it; the HF `Trainer` saves nothing). Writes `bench.json` and `REPORT.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import transformers
from torch import nn

from training.data import load_dataset
from training.default_model import BERT_TINY_HUB, REPO, SHARED_BERT_TINY, SHARED_DATA
from training.loop import LoopConfig, TrainingLoop
from training.modeling import build_classifier, encode, load_tokenizer, setup_torch

log = logging.getLogger("training.bench_loop")

LOOPS = ("plain", "hf_trainer")


@dataclasses.dataclass
class Workload:
    """What both loops train on."""

    model_ref: str
    labels: list[str]
    token_ids: list[list[int]]
    targets: np.ndarray
    pad_id: int
    batch_size: int
    learning_rate: float
    seed: int


def run_plain(work: Workload, initial: dict[str, torch.Tensor], bf16: bool) -> tuple[float, float]:
    """(seconds, last logged loss) for one epoch of `training.loop.TrainingLoop`."""
    torch.manual_seed(work.seed)  # dropout masks as reproducible as the HF Trainer's set_seed
    model = build_classifier(work.model_ref, work.labels, from_config=True)
    model.load_state_dict(initial)
    targets = torch.from_numpy(work.targets)
    loss_fn = nn.BCEWithLogitsLoss()

    def step(inputs: dict[str, torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        return loss_fn(model(**inputs).logits.float(), targets[index])

    config = LoopConfig(
        epochs=1,
        batch_size=work.batch_size,
        learning_rate=work.learning_rate,
        seed=work.seed,
        bf16=bf16,
        checkpoint_every=0,
        progress=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingLoop(
            {"model": model}, work.token_ids, work.pad_id, step, config, Path(tmp) / "ckpt"
        )
        started = time.perf_counter()
        history = training.train()
        seconds = time.perf_counter() - started
    return seconds, float(history[-1]["loss"])


class _Rows(torch.utils.data.Dataset):
    def __init__(self, work: Workload) -> None:
        self.work = work

    def __len__(self) -> int:
        return len(self.work.token_ids)

    def __getitem__(self, i: int) -> dict[str, object]:
        return {"input_ids": self.work.token_ids[i], "labels": self.work.targets[i].tolist()}


def _training_arguments(out: str, work: Workload, bf16: bool) -> transformers.TrainingArguments:
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    kwargs: dict[str, object] = {
        "output_dir": out,
        "num_train_epochs": 1,
        "per_device_train_batch_size": work.batch_size,
        "learning_rate": work.learning_rate,
        "weight_decay": 0.01,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "linear",
        "seed": work.seed,
        "bf16": bf16,
        "use_cpu": True,
        "save_strategy": "no",
        "logging_steps": 50,
        "report_to": [],
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
    # transformers 5 renamed these; keep both spellings working.
    if "train_sampling_strategy" in fields:
        kwargs["train_sampling_strategy"] = "group_by_length"
    else:
        kwargs["group_by_length"] = True
    kwargs["warmup_steps" if "warmup_ratio" not in fields else "warmup_ratio"] = 0.06
    return transformers.TrainingArguments(**kwargs)  # type: ignore[arg-type]


def run_hf_trainer(
    work: Workload, initial: dict[str, torch.Tensor], bf16: bool
) -> tuple[float, float]:
    """(seconds, last logged loss) for one epoch of `transformers.Trainer`."""
    model = build_classifier(work.model_ref, work.labels, from_config=True)
    model.load_state_dict(initial)
    tokenizer = load_tokenizer(work.model_ref)
    collator = transformers.DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = transformers.Trainer(
            model=model,
            args=_training_arguments(tmp, work, bf16),
            train_dataset=_Rows(work),
            data_collator=collator,
        )
        started = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - started
    logged = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return seconds, float(logged[-1] if logged else result.training_loss)


RUNNERS: dict[str, Callable[[Workload, dict[str, torch.Tensor], bool], tuple[float, float]]] = {
    "plain": run_plain,
    "hf_trainer": run_hf_trainer,
}


def benchmark(
    work: Workload, precisions: list[str], repeats: int
) -> dict[str, dict[str, dict[str, object]]]:
    """Per precision and loop: examples/s of each run, their median, and the last losses."""
    torch.manual_seed(work.seed)
    initial = build_classifier(work.model_ref, work.labels, from_config=True).state_dict()
    results: dict[str, dict[str, dict[str, object]]] = {}
    for precision in precisions:
        bf16 = precision == "bf16"
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in LOOPS}
        for r in range(repeats):
            order = LOOPS if r % 2 == 0 else LOOPS[::-1]
            for name in order:
                seconds, loss = RUNNERS[name](work, initial, bf16)
                runs[name].append((seconds, loss))
                log.info(
                    "%s %s run %d: %.2fs (%.0f examples/s), last loss %.4f",
                    precision,
                    name,
                    r + 1,
                    seconds,
                    len(work.token_ids) / seconds,
                    loss,
                )
        results[precision] = {
            name: {
                "examples_per_s": [round(len(work.token_ids) / s, 1) for s, _ in values],
                "median_examples_per_s": round(
                    statistics.median(len(work.token_ids) / s for s, _ in values), 1
                ),
                "last_loss": [round(loss, 5) for _, loss in values],
            }
            for name, values in runs.items()
        }
    return results


def report(summary: dict[str, object]) -> str:
    """The markdown report."""
    setup: dict[str, object] = summary["setup"]  # type: ignore[assignment]
    results: dict[str, dict[str, dict[str, object]]] = summary["results"]  # type: ignore[assignment]
    lines = [
        "# Training loop: plain loop vs HF Trainer",
        "",
        f"Model `{setup['model']}` (random init from config), {setup['rows']} rows of "
        f"`{setup['data']}`, batch {setup['batch_size']}, max length {setup['max_length']}, "
        f"{setup['threads']} torch threads, {setup['repeats']} alternating runs per loop; "
        f"torch {setup['torch']}, transformers {setup['transformers']}, {setup['machine']}.",
        "",
        "| precision | plain loop (examples/s, median) | HF Trainer | plain / HF |",
        "|---|---:|---:|---:|",
    ]
    for precision, loops in results.items():
        plain = float(loops["plain"]["median_examples_per_s"])  # type: ignore[arg-type]
        hf = float(loops["hf_trainer"]["median_examples_per_s"])  # type: ignore[arg-type]
        lines.append(f"| {precision} | {plain:,.0f} | {hf:,.0f} | {plain / hf:.2f} |")
    lines += ["", "Each run's figures are in `bench.json`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m training.bench_loop`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(
        prog="python -m training.bench_loop", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument(
        "--model",
        default=str(SHARED_BERT_TINY) if SHARED_BERT_TINY.is_dir() else BERT_TINY_HUB,
        help="config + tokenizer (hub id or directory); weights are initialised at random",
    )
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's own)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output-dir", type=Path, default=REPO / "bench-results" / "training-loop")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or any(p not in ("fp32", "bf16") for p in precisions):
        parser.error("--precisions takes a comma-separated list of fp32, bf16")
    if args.rows < args.batch_size or args.repeats < 1:
        parser.error("--rows must be at least --batch-size, and --repeats at least 1")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    transformers.logging.set_verbosity_error()
    setup_torch(args.threads, args.seed)
    dataset = load_dataset(args.data)
    rows = min(args.rows, len(dataset))
    tokenizer = load_tokenizer(args.model)
    assert dataset.labels is not None
    work = Workload(
        model_ref=args.model,
        labels=list(dataset.label_names),
        token_ids=encode(tokenizer, dataset.texts[:rows], args.max_length),
        targets=dataset.labels[:rows].astype(np.float32),
        pad_id=tokenizer.pad_token_id or 0,
        batch_size=args.batch_size,
        learning_rate=5e-4,
        seed=args.seed,
    )
    summary: dict[str, object] = {
        "setup": {
            "model": args.model,
            "data": str(args.data),
            "rows": rows,
            "batch_size": args.batch_size,
            "max_length": args.max_length,
            "repeats": args.repeats,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        },
        "results": benchmark(work, precisions, args.repeats),
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "bench.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = report(summary)
    (args.output_dir / "REPORT.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
