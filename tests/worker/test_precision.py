"""Forward passes and precisions: scores stay those of one record alone in fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worker.backends.backend import ModelLoadError
from worker.backends.model import ServedModel, load_served_model

TEXTS = [
    "ok",
    "a much longer comment about the history of the river " * 30,
    "You are a complete idiot and everybody here knows it, go away now.",
    "",
    "short one",
    "Ünïcödé 🎉 " * 20,
    "medium length comment, nothing special in it at all",
]


@pytest.fixture(scope="module")
def fp32(tiny_model_dir: Path) -> ServedModel:
    return load_served_model(
        tiny_model_dir, device="cpu", precision="fp32", max_length=64, token_budget=0
    )


@pytest.fixture(scope="module")
def alone(fp32: ServedModel) -> np.ndarray:
    return np.vstack([fp32.score([text]) for text in TEXTS])


def test_length_sorted_forward_passes_return_rows_in_the_original_order(
    tiny_model_dir: Path, fp32: ServedModel, alone: np.ndarray
) -> None:
    passes = load_served_model(
        tiny_model_dir, device="cpu", precision="fp32", max_length=64, token_budget=64
    )
    np.testing.assert_allclose(passes.score(TEXTS), alone, atol=1e-5)
    np.testing.assert_allclose(fp32.score(TEXTS), alone, atol=1e-5)  # one padded pass


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_stays_close_to_fp32(
    tiny_model_dir: Path, alone: np.ndarray, precision: str
) -> None:
    reduced = load_served_model(tiny_model_dir, device="cpu", max_length=64, precision=precision)
    scores = reduced.score(TEXTS)
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, alone, atol=0.05)


def test_fp16_needs_cuda_and_unknown_precision_is_refused(tiny_model_dir: Path) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="fp16 needs a CUDA device"):
            load_served_model(tiny_model_dir, device="cpu", precision="fp16")
    with pytest.raises(ModelLoadError, match="precision must be auto or one of"):
        load_served_model(tiny_model_dir, device="cpu", precision="fp8")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (lent device only)")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_precisions_match_cpu(tiny_model_dir: Path, alone: np.ndarray, precision: str) -> None:
    gpu = load_served_model(
        tiny_model_dir, device="cuda", max_length=64, precision=precision, token_budget=64
    )
    tolerance = 1e-4 if precision == "fp32" else 0.05
    np.testing.assert_allclose(gpu.score(TEXTS), alone, atol=tolerance)


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_the_traced_cpu_graph_scores_as_the_eager_model(
    tiny_model_dir: Path, precision: str
) -> None:
    """On CPU the backend serves a graph traced on one small padded example; batches of other
    sizes, lengths and padding must score exactly as the eager model does."""
    from transformers import AutoModelForSequenceClassification

    from worker.backends.torch_backend import TorchBackend

    served = load_served_model(tiny_model_dir, device="cpu", precision=precision, max_length=64)

    def backend(trace: bool) -> TorchBackend:
        model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
        return TorchBackend(
            model, served.contract.labels, torch.device("cpu"), precision, trace=trace
        )

    traced, eager = backend(trace=True), backend(trace=False)
    assert traced._traced is not None and eager._traced is None
    sequences = served.tokenizer.encode(TEXTS)
    batches = [
        served.tokenizer.pad([sequences[i] for i in rows])
        for rows in ([0], [1], [2, 4], [0, 1, 2, 3, 4, 5, 6], [5, 3, 6, 2])
    ]
    for batch in batches:
        np.testing.assert_allclose(traced.infer(batch), eager.infer(batch), atol=1e-6)
    # the passes of one batch in one call of the graph: each pass's rows, in order
    together = traced.infer_passes(batches)
    assert len(together) == len(batches)
    for rows, batch in zip(together, batches, strict=True):
        np.testing.assert_allclose(rows, eager.infer(batch), atol=1e-6)
