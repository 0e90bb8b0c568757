"""CUDA graphs: the bucket set covers every shape the batcher cuts, the bookkeeping counts
replays and fallbacks (CPU); graph replay equals eager, and an uncaptured shape runs eagerly
(CUDA only, on the lent GPU machine)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from testing.models import SAMPLE_TEXTS, eager_probabilities
from worker.backends.backend import TokenBatch
from worker.backends.cuda_graphs import (
    CudaGraphRunner,
    GraphBook,
    graph_buckets,
    graphs_supported,
    select_buckets,
)
from worker.pipeline.batching import forward_passes, padded_length

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (lent device only)")

TEXTS = SAMPLE_TEXTS


# --- bucket set (CPU) ---


def test_buckets_of_the_default_settings() -> None:
    buckets = graph_buckets(64, 2048, 128)
    # lengths 32, 64, 96, 128 hold at most 64, 32, 21, 16 records in 2048 tokens
    assert len(buckets) == 64 + 32 + 21 + 16
    assert buckets[0] == (1, 32) and buckets[-1] == (16, 128)
    assert (64, 32) in buckets and (65, 32) not in buckets and (17, 128) not in buckets
    assert buckets == sorted(buckets, key=lambda s: (s[1], s[0]))


def test_without_a_budget_one_record_of_each_length() -> None:
    assert graph_buckets(64, 0, 100) == [(1, 32), (1, 64), (1, 96), (1, 128)]


def test_a_length_over_the_budget_still_gets_a_single_record_bucket() -> None:
    assert graph_buckets(8, 64, 128) == [(1, 32), (2, 32), (1, 64), (1, 96), (1, 128)]


@settings(max_examples=80, deadline=None)
@given(
    max_batch=st.integers(1, 96),
    budget=st.integers(1, 4096),
    max_length=st.integers(8, 256),
    data=st.data(),
)
def test_every_forward_pass_the_batcher_cuts_has_a_bucket(
    max_batch: int, budget: int, max_length: int, data: st.DataObject
) -> None:
    buckets = set(graph_buckets(max_batch, budget, max_length, max_graphs=None))
    lengths = data.draw(st.lists(st.integers(1, max_length), min_size=1, max_size=max_batch))
    for indices in forward_passes(lengths, budget):
        shape = (len(indices), padded_length(max(lengths[i] for i in indices)))
        assert shape in buckets


def test_select_buckets_dedupes_sorts_and_keeps_the_smallest_over_the_cap() -> None:
    shapes = [(4, 64), (1, 32), (4, 64), (2, 128), (16, 32), (1, 64)]
    assert select_buckets(shapes, None) == [(1, 32), (16, 32), (1, 64), (4, 64), (2, 128)]
    # tokens: (1,32)=32 (1,64)=64 (2,128)=256 (4,64)=256 (16,32)=512
    assert select_buckets(shapes, 3) == [(1, 32), (1, 64), (4, 64)]
    assert select_buckets(shapes, 0) == []
    capped = graph_buckets(64, 2048, 128, max_graphs=50)
    assert len(capped) == 50 and (1, 128) in capped and (64, 32) not in capped
    with pytest.raises(ValueError):
        select_buckets([(0, 32)])


# --- bookkeeping (CPU) ---


def test_graph_book_counts_replays_and_fallbacks() -> None:
    book: GraphBook[str] = GraphBook()
    book.add((2, 64), "b")
    book.add((1, 32), "a")
    assert book.captured_shapes == [(1, 32), (2, 64)]
    assert (1, 32) in book and (3, 32) not in book and len(book) == 2
    assert book.lookup((1, 32)) == "a"
    assert book.lookup((3, 32)) is None
    assert book.lookup((3, 32)) is None
    assert book.stats() == {
        "graphs": 2, "failed": 0, "replays": 1, "fallbacks": 2, "fallback_shapes": [(3, 32)],
    }  # fmt: skip
    with pytest.raises(ValueError):
        book.add((1, 32), "again")


def test_graph_book_records_failures_until_captured() -> None:
    book: GraphBook[str] = GraphBook()
    book.fail((4, 32), "RuntimeError: out of memory")
    assert book.failed == {(4, 32): "RuntimeError: out of memory"}
    assert (4, 32) not in book and book.lookup((4, 32)) is None
    book.add((4, 32), "g")
    assert book.failed == {} and book.lookup((4, 32)) == "g"


def test_the_runner_refuses_a_cpu_device_and_support_needs_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA device"):
        CudaGraphRunner(torch.nn.Linear(2, 2), torch.device("cpu"))
    assert not graphs_supported(torch.device("cpu"), lambda: True)
    assert not graphs_supported(torch.device("cuda"), lambda: False)
    assert graphs_supported(torch.device("cuda:0"), lambda: True)


# --- graph replay (CUDA only) ---


def _load(model_dir: Path, precision: str = "fp32"):
    from transformers import AutoModelForSequenceClassification

    from worker.backends.torch_backend import apply_precision

    device = torch.device("cuda")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True)
    return apply_precision(model.float().eval().to(device), precision, device), device


def _batches(model_dir: Path) -> list[TokenBatch]:
    """Padded batches of real texts (mixed masks), and one with no padding at all."""
    from worker.pipeline.tokenizer import TextTokenizer

    tokenizer = TextTokenizer.load(model_dir, 128)
    ids = tokenizer.encode(TEXTS)
    batches = [tokenizer.pad(ids), tokenizer.pad(ids[:3]), tokenizer.pad(ids[3:6])]
    rng = np.random.default_rng(0)
    full = rng.integers(1000, 5000, size=(4, 64), dtype=np.int64)
    batches.append(TokenBatch(full, np.ones_like(full), np.zeros_like(full)))
    return batches


@needs_cuda
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 1e-4), ("fp16", 2e-3)])
def test_graph_replay_equals_eager(tiny_model_dir: Path, precision: str, tolerance: float):
    model, device = _load(tiny_model_dir, precision)
    runner = CudaGraphRunner(model, device)
    batches = _batches(tiny_model_dir)
    runner.capture(b.shape for b in batches)
    assert runner.disabled is None, runner.disabled
    assert set(runner.captured_shapes) == {b.shape for b in batches}
    for batch in batches:
        replayed = runner.infer(batch)
        eager = runner.eager(batch)
        assert replayed.shape == (len(batch), 6) and replayed.dtype == np.float32
        np.testing.assert_allclose(replayed, eager, atol=tolerance)
    assert runner.book.replays == len(batches) and runner.book.fallbacks == 0
    # the static buffers really take each batch: same shape, other rows, other scores
    first, second = batches[1], TokenBatch(*(a[::-1].copy() for a in (
        batches[1].input_ids, batches[1].attention_mask, batches[1].token_type_ids)))  # fmt: skip
    a, b = runner.infer(first), runner.infer(second)
    np.testing.assert_allclose(b, a[::-1], atol=tolerance)
    assert np.ptp(a[:, 0]) > 1e-3


@needs_cuda
def test_graph_replay_equals_the_cpu_model(tiny_model_dir: Path) -> None:
    model, device = _load(tiny_model_dir)
    runner = CudaGraphRunner(model, device)
    batch = _batches(tiny_model_dir)[0]
    runner.capture([batch.shape])
    replayed = runner.infer(batch)
    cpu_model = _load(tiny_model_dir)[0].to("cpu")
    np.testing.assert_allclose(replayed, eager_probabilities(cpu_model, batch), atol=1e-4)


@needs_cuda
def test_an_uncaptured_shape_falls_back_to_eager(tiny_model_dir: Path) -> None:
    model, device = _load(tiny_model_dir)
    runner = CudaGraphRunner(model, device)
    batches = _batches(tiny_model_dir)
    runner.capture([batches[1].shape])
    assert runner.captured_shapes == [batches[1].shape]
    other = batches[0]
    assert other.shape not in runner.book
    np.testing.assert_allclose(runner.infer(other), runner.eager(other), atol=1e-6)
    assert runner.book.fallbacks == 1 and runner.book.fallback_shapes == {other.shape}
    assert runner.book.replays == 0
    runner.infer(batches[1])
    assert runner.book.replays == 1
    # capturing again adds only what is missing
    assert runner.capture([batches[1].shape, other.shape]) == [other.shape]


@needs_cuda
def test_capture_of_the_worker_buckets_is_quick_enough(tiny_model_dir: Path) -> None:
    """The default settings' 133 buckets, as the worker's warm-up would capture them."""
    import time

    model, device = _load(tiny_model_dir)
    runner = CudaGraphRunner(model, device)
    started = time.perf_counter()
    runner.capture(graph_buckets(64, 2048, 128))
    elapsed = time.perf_counter() - started
    assert runner.disabled is None, runner.disabled
    assert len(runner.captured_shapes) == 133
    assert elapsed < 60, f"capturing 133 graphs took {elapsed:.1f} s"
    rng = np.random.default_rng(1)
    ids = rng.integers(1000, 5000, size=(16, 128), dtype=np.int64)
    mask = (np.arange(128) < rng.integers(1, 129, size=(16, 1))).astype(np.int64)
    batch = TokenBatch(ids * mask, mask, np.zeros_like(ids))
    np.testing.assert_allclose(runner.infer(batch), runner.eager(batch), atol=1e-4)
