"""A plain training loop (AdamW, linear warmup/decay) with safetensors + JSON checkpoints.

Used by both `fit` and `distill`. A plain loop rather than the HF `Trainer`: it expresses the
distillation loss (extra modules, teacher targets by row index), bf16 autocast and
length-grouped batches directly, and its checkpoints need no pickles (the HF `Trainer`
`torch.save`s optimizer state). `make bench-training` measures the two side by side on BERT-Tiny
(docs/benchmarks.md). Checkpoints hold the weights of every trained module, the
optimizer state, the scheduler position and the torch RNG state, all as safetensors or JSON
(no pickles), so an interrupted run resumes on the same batch order.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from training.modeling import autocast, collate, length_grouped_batches, progress_interval

log = logging.getLogger(__name__)

StepFn = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
"""(padded batch inputs, row indices of the batch) -> loss."""
CHECKPOINT_STATE = "trainer_state.json"


@dataclass
class LoopConfig:
    """Optimisation settings (`epochs` may be fractional: the schedule is counted in steps)."""

    epochs: float = 3.0
    batch_size: int = 32
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_grad_norm: float = 1.0
    seed: int = 42
    bf16: bool = False
    checkpoint_every: int = 500
    stop_after_steps: int | None = None
    progress: bool = True


def _optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{key}"] = value.detach().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, object]] = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class TrainingLoop:
    """Runs `step_fn` over length-grouped batches of pre-tokenised examples.

    `modules` are the trained modules by name (each checkpointed as `NAME.safetensors`);
    `token_ids[i]` is row `i`, and `step_fn` gets the row indices of each batch so that it can
    look up that row's targets.
    """

    def __init__(
        self,
        modules: dict[str, nn.Module],
        token_ids: Sequence[Sequence[int]],
        pad_id: int,
        step_fn: StepFn,
        config: LoopConfig,
        checkpoint_dir: Path,
    ) -> None:
        self.modules = modules
        self.token_ids = token_ids
        self.pad_id = pad_id
        self.step_fn = step_fn
        self.cfg = config
        self.checkpoint_dir = Path(checkpoint_dir)
        self.lengths = [len(x) for x in token_ids]
        self.steps_per_epoch = math.ceil(len(token_ids) / config.batch_size)
        self.total_steps = max(1, math.ceil(self.steps_per_epoch * config.epochs))
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        # Fused: BERT-Tiny's step is dominated by the dense word-embedding gradient, where the
        # default AdamW kernel is several times slower (docs/training.md).
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": config.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=config.learning_rate,
            fused=True,
        )
        warmup = int(self.total_steps * config.warmup_ratio)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.global_step = 0
        self.history: list[dict[str, float]] = []

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write weights, optimizer, scheduler and RNG state (safetensors + JSON)."""
        d = self.checkpoint_dir
        d.mkdir(parents=True, exist_ok=True)
        for name, module in self.modules.items():
            save_model(module, str(d / f"{name}.safetensors"))
        tensors, meta = _optimizer_to_tensors(self.optimizer)
        tensors["rng.torch"] = torch.get_rng_state()
        save_file(tensors, str(d / "optimizer.safetensors"))
        state = {
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "optimizer": meta,
            "scheduler": {"last_epoch": self.scheduler.last_epoch},
            "history": self.history,
            "config": asdict(self.cfg),
        }
        tmp = d / f"{CHECKPOINT_STATE}.tmp"
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(d / CHECKPOINT_STATE)
        log.info("checkpoint at step %d -> %s", self.global_step, d)

    def load_checkpoint(self) -> bool:
        """Resume from `checkpoint_dir` if it holds a checkpoint; True when resumed."""
        d = self.checkpoint_dir
        state_file = d / CHECKPOINT_STATE
        if not state_file.exists():
            return False
        state = json.loads(state_file.read_text())
        for name, module in self.modules.items():
            load_model(module, str(d / f"{name}.safetensors"))
        tensors = load_file(str(d / "optimizer.safetensors"))
        _optimizer_from_tensors(self.optimizer, tensors, state["optimizer"])
        torch.set_rng_state(tensors["rng.torch"])
        self.global_step = int(state["global_step"])
        self.scheduler.last_epoch = int(state["scheduler"]["last_epoch"])
        self.scheduler._last_lr = [  # keep get_last_lr() consistent after resume
            g["lr"] for g in self.optimizer.param_groups
        ]
        self.history = list(state["history"])
        log.info("resumed from %s at step %d/%d", d, self.global_step, self.total_steps)
        return True

    # -- training ----------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        return length_grouped_batches(self.lengths, self.cfg.batch_size, self.cfg.seed + epoch)

    def train(self) -> list[dict[str, float]]:
        """Train to `total_steps` (or `stop_after_steps` in this call); returns the loss history."""
        from tqdm.auto import tqdm

        for module in self.modules.values():
            module.train()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        stop_at = self.total_steps
        if self.cfg.stop_after_steps is not None:
            stop_at = min(stop_at, self.global_step + self.cfg.stop_after_steps)
        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            desc="train",
            disable=not self.cfg.progress,
            mininterval=progress_interval(),
        )
        running, count, started = 0.0, 0, time.perf_counter()
        while self.global_step < stop_at:
            epoch, offset = divmod(self.global_step, self.steps_per_epoch)
            batches = self._epoch_batches(epoch)
            for batch in batches[offset:]:
                if self.global_step >= stop_at:
                    break
                inputs = collate([self.token_ids[i] for i in batch], self.pad_id)
                index = torch.as_tensor(batch, dtype=torch.long)
                with autocast(self.cfg.bf16):
                    loss = self.step_fn(inputs, index)
                loss = loss.float()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.global_step += 1
                running += float(loss.detach())
                count += 1
                bar.update(1)
                if count == 50 or self.global_step in (stop_at, self.total_steps):
                    entry = {
                        "step": self.global_step,
                        "epoch": self.global_step / self.steps_per_epoch,
                        "loss": running / count,
                        "lr": self.scheduler.get_last_lr()[0],
                    }
                    self.history.append(entry)
                    bar.set_postfix(loss=f"{entry['loss']:.4f}")
                    running, count = 0.0, 0
                if self.cfg.checkpoint_every and self.global_step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        log.info(
            "trained to step %d/%d in %.1fs",
            self.global_step,
            self.total_steps,
            time.perf_counter() - started,
        )
        for module in self.modules.values():
            module.eval()
        return self.history

    @property
    def finished(self) -> bool:
        """Whether the whole schedule has run."""
        return self.global_step >= self.total_steps
