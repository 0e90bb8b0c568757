"""CUDA graphs for the torch backend: one captured graph per (batch size, padded length) bucket.

A BERT-Tiny forward pass is a few dozen small kernels; on a GPU their launches, not the
arithmetic, bound a small batch. Replaying a graph captured at warm-up launches them all at
once. The batcher produces a finite set of shapes (`worker.pipeline.batching.warm_up_shapes`),
so one graph per shape covers every batch without padding anything further; a shape that was not
captured (or could not be) runs eagerly, with the same result.

The bucket set (`graph_buckets`, `select_buckets`) and the bookkeeping (`GraphBook`) are pure
and tested without a GPU; `CudaGraphRunner` needs torch on a CUDA device.

Per bucket the runner keeps static device inputs (the graph reads them), page-locked host
buffers (so that host-to-device copies are asynchronous) and the graph's static output. The
graphs share one memory pool: a graph's output is only valid until the next replay, so `infer`
copies it out before returning. `infer` is called from one thread at a time (the Backend
contract).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from worker.backends.backend import TokenBatch
from worker.pipeline.batching import warm_up_shapes

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Shape = tuple[int, int]  # (batch size, padded length)
T = TypeVar("T")

MAX_GRAPHS = 512  # beyond this, capture costs more start-up time than the graphs save
WARMUP_RUNS = 2  # eager runs on a side stream before a capture (cuBLAS handles, autotuning)


def graph_buckets(
    max_batch_size: int, token_budget: int, max_length: int, max_graphs: int | None = MAX_GRAPHS
) -> list[Shape]:
    """The buckets of these settings: every shape the batcher can cut
    (`worker.pipeline.batching.warm_up_shapes`, what the worker's warm-up captures), sorted by
    (length, batch) and capped by `select_buckets`."""
    return select_buckets(warm_up_shapes(max_batch_size, token_budget, max_length), max_graphs)


def select_buckets(shapes: Iterable[Shape], max_graphs: int | None = MAX_GRAPHS) -> list[Shape]:
    """The distinct valid shapes sorted by (length, batch); over `max_graphs`, those with the
    fewest tokens are kept (small batches are the launch-bound ones that graphs speed up)."""
    unique = {(int(b), int(n)) for b, n in shapes}
    invalid = [s for s in unique if s[0] < 1 or s[1] < 1]
    if invalid:
        raise ValueError(f"shapes must be positive (batch, length) pairs, got {sorted(invalid)}")
    chosen = sorted(unique, key=lambda s: (s[1], s[0]))
    if max_graphs is not None and len(chosen) > max_graphs:
        kept = set(sorted(chosen, key=lambda s: (s[0] * s[1], s[1], s[0]))[: max(0, max_graphs)])
        chosen = [s for s in chosen if s in kept]
    return chosen


@dataclass
class GraphBook(Generic[T]):
    """Which shapes have a captured graph (an entry of type T), which could not be captured
    and why, and how often `infer` replayed a graph or fell back to eager."""

    _entries: dict[Shape, T] = field(default_factory=dict)
    failed: dict[Shape, str] = field(default_factory=dict)
    replays: int = 0
    fallbacks: int = 0
    fallback_shapes: set[Shape] = field(default_factory=set)

    def add(self, shape: Shape, entry: T) -> None:
        if shape in self._entries:
            raise ValueError(f"shape {shape} is already captured")
        self._entries[shape] = entry
        self.failed.pop(shape, None)

    def fail(self, shape: Shape, reason: str) -> None:
        self.failed[shape] = reason

    def lookup(self, shape: Shape) -> T | None:
        """The entry for `shape`, counted as a replay; None (counted as a fallback) if absent."""
        entry = self._entries.get(shape)
        if entry is None:
            self.fallbacks += 1
            self.fallback_shapes.add(shape)
        else:
            self.replays += 1
        return entry

    def __contains__(self, shape: object) -> bool:
        return shape in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def captured_shapes(self) -> list[Shape]:
        return sorted(self._entries, key=lambda s: (s[1], s[0]))

    def stats(self) -> dict[str, Any]:
        return {
            "graphs": len(self._entries),
            "failed": len(self.failed),
            "replays": self.replays,
            "fallbacks": self.fallbacks,
            "fallback_shapes": sorted(self.fallback_shapes),
        }


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: dict[str, Any]  # name -> static device tensor the graph reads
    staging: dict[str, Any]  # name -> pinned host tensor of the same shape
    output: Any  # static device tensor (batch, labels) float32 the graph writes
    host_output: Any  # pinned host tensor, the output's copy


class CudaGraphRunner:
    """Graph replay for a torch sequence classifier on a CUDA device: `capture(shapes)` at
    warm-up, then `infer(batch)` returns (batch, labels) float32 sigmoids, from a graph where
    the batch's shape was captured, eagerly otherwise."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        *,
        uses_token_types: bool = True,
        max_graphs: int | None = MAX_GRAPHS,
    ) -> None:
        import torch

        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self._torch = torch
        self._model = model
        self._device = device
        self._names = ("input_ids", "attention_mask") + (
            ("token_type_ids",) if uses_token_types else ()
        )
        self.max_graphs = max_graphs
        self.book: GraphBook[_Graph] = GraphBook()
        self.disabled: str | None = None  # why capture stopped, if it did
        self._pool: Any = None

    @property
    def captured_shapes(self) -> list[Shape]:
        return self.book.captured_shapes

    def capture(self, shapes: Iterable[Shape]) -> list[Shape]:
        """Capture a graph for each shape not captured yet (capped at `max_graphs`); returns
        the shapes captured now. The first failure (an operation the model cannot run while
        capturing, memory) stops capturing: the rest is served eagerly, with a warning."""
        captured: list[Shape] = []
        if self.disabled:
            return captured
        wanted = [s for s in select_buckets(shapes, self.max_graphs) if s not in self.book]
        started = time.perf_counter()
        for shape in wanted:
            try:
                self.book.add(shape, self._capture(shape))
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
                self.book.fail(shape, reason)
                self.disabled = f"capture of shape {shape} failed ({reason})"
                log.warning("CUDA graphs: %s; serving the other shapes eagerly", self.disabled)
                self._torch.cuda.synchronize(self._device)
                break
            captured.append(shape)
        log.info(
            "CUDA graphs: %d captured in %.1f s (%d in all)",
            len(captured), time.perf_counter() - started, len(self.book),
        )  # fmt: skip
        return captured

    def infer(self, batch: TokenBatch) -> np.ndarray:
        entry = self.book.lookup(batch.shape)
        if entry is None:
            return self.eager(batch)
        torch = self._torch
        with torch.inference_mode():
            for name in self._names:
                entry.staging[name].numpy()[...] = getattr(batch, name)
                entry.inputs[name].copy_(entry.staging[name], non_blocking=True)
            entry.graph.replay()
            entry.host_output.copy_(entry.output, non_blocking=True)
            torch.cuda.current_stream(self._device).synchronize()
        return entry.host_output.numpy().copy()

    def eager(self, batch: TokenBatch) -> np.ndarray:
        """The forward pass without a graph (pinned, asynchronous copies as in TorchBackend)."""
        torch = self._torch
        tensors = {
            name: torch.from_numpy(getattr(batch, name))
            .pin_memory()
            .to(self._device, non_blocking=True)
            for name in self._names
        }
        with torch.inference_mode():
            logits = self._model(**tensors).logits
            return torch.sigmoid(logits.float()).cpu().numpy()

    def _forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._torch.sigmoid(self._model(**inputs).logits.float())

    def _capture(self, shape: Shape) -> _Graph:
        torch = self._torch
        length = shape[1]
        with torch.inference_mode():
            staging = {
                name: torch.zeros(shape, dtype=torch.int64).pin_memory() for name in self._names
            }
            inputs = {name: torch.zeros(shape, dtype=torch.int64, device=self._device)
                      for name in self._names}  # fmt: skip
            # A mask with padding, so that no "all ones: skip the mask" shortcut of the model
            # can be what the graph records; real batches overwrite it before each replay.
            inputs["attention_mask"].fill_(1)
            if length > 1:
                inputs["attention_mask"][:, -1] = 0
            side = torch.cuda.Stream(self._device)
            side.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self._forward(inputs)
            torch.cuda.current_stream(self._device).wait_stream(side)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                output = self._forward(inputs)
            host_output = torch.empty(output.shape, dtype=output.dtype).pin_memory()
        return _Graph(graph, inputs, staging, output, host_output)


def graphs_supported(device: torch.device, is_available: Callable[[], bool] | None = None) -> bool:
    """Whether graphs can serve on `device`: a CUDA device that torch can use."""
    if device.type != "cuda":
        return False
    if is_available is None:
        import torch

        is_available = torch.cuda.is_available
    return bool(is_available())
