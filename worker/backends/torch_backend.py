"""The torch backend: a Hugging Face sequence classifier resident on one device."""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from worker.backends.backend import Backend, ModelLoadError, TokenBatch
from worker.backends.cuda_graphs import CudaGraphRunner

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when present; `cuda` without a GPU is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ModelLoadError(f"unknown device {device!r}: use auto, cpu or cuda[:N]")
    return torch.device(device)


def configure_torch(threads: int = 0, interop_threads: int = 0) -> None:
    """Process-wide torch settings (0 keeps torch's default)."""
    if threads:
        torch.set_num_threads(threads)
    if interop_threads:
        with contextlib.suppress(RuntimeError):  # only settable before the first parallel work
            torch.set_num_interop_threads(interop_threads)
    torch.set_flush_denormal(True)


def apply_precision(
    model: torch.nn.Module, precision: str, device: torch.device
) -> torch.nn.Module:
    """fp32 as loaded; bf16/fp16 weights (fp16 on CUDA only); int8 dynamic quantization of the
    linear layers (CPU only). Scores stay float32 sigmoids whatever the precision."""
    if precision == "fp32":
        return model
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise ModelLoadError("precision fp16 needs a CUDA device; use bf16 on CPU")
        return model.half()
    if precision == "int8":
        if device.type != "cpu":
            raise ModelLoadError("precision int8 (dynamic quantization) runs on CPU only")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.ao.quantization.quantize_dynamic(
                model, {torch.nn.Linear}, dtype=torch.qint8
            )
    raise ModelLoadError(f"unknown precision {precision!r}: use one of {PRECISIONS}")


class _Probabilities(torch.nn.Module):
    """The classifier as a function of positional tensors, for `torch.jit.trace`: per-label
    sigmoid probabilities in float32, computed inside the graph (not as two more Python torch
    calls after it, each a GIL release and re-take)."""

    def __init__(self, model: torch.nn.Module, uses_token_types: bool) -> None:
        super().__init__()
        self.model = model
        self.uses_token_types = uses_token_types

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        if self.uses_token_types:
            logits = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).logits
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return torch.sigmoid(logits.float())


class _Passes(torch.nn.Module):
    """Every forward pass of one batch in one call of the (traced) model: the GIL is released
    and re-taken once per batch instead of once per pass, and each re-take waits while the
    event loop holds it (docs/benchmarks.md)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, passes: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    ) -> list[torch.Tensor]:
        probabilities: list[torch.Tensor] = []
        for input_ids, attention_mask, token_type_ids in passes:
            probabilities.append(self.model(input_ids, attention_mask, token_type_ids))
        return probabilities


class _DropLossTypeNotice(logging.Filter):
    """transformers' "`loss_type=None` ... Using the default loss: `ForCausalLMLoss`." line.
    Tracing probes every attribute of every submodule (torch.jit's scan for exported methods),
    including `loss_function`, a training-only property that warns for a class with no loss
    type (the bare `BertModel` inside the classifier). It says nothing true about serving."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("`loss_type=")


HF_MODELING_LOGGER = "transformers.modeling_utils"


def trace_on_cpu(model: torch.nn.Module, uses_token_types: bool) -> torch.jit.ScriptModule:
    """The eager model traced, wrapped in `_Passes` and frozen: one C++ call per batch instead
    of a few hundred Python module calls per pass, which holds the GIL far less (the event loop
    shares the process) and halves the cost of a pass of one comment. Traced on a padded
    example; the graph does not depend on the example's shape or padding
    (tests/worker/test_precision.py checks scores against eager on other shapes)."""
    ids = torch.full((2, 16), 1000, dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    quiet, hf_logger = _DropLossTypeNotice(), logging.getLogger(HF_MODELING_LOGGER)
    hf_logger.addFilter(quiet)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about Python values in transformers
            traced = torch.jit.trace(
                _Probabilities(model, uses_token_types).eval(),
                (ids, mask, torch.zeros_like(ids)),
                check_trace=False,
                strict=False,
            )
            return torch.jit.freeze(torch.jit.script(_Passes(traced)).eval())
    finally:
        hf_logger.removeFilter(quiet)


class TorchBackend(Backend):
    """`AutoModelForSequenceClassification` in inference mode; sigmoid per label. On CPU the
    forward pass is a traced TorchScript graph (`trace_on_cpu`); on CUDA, eager with one CUDA
    graph per batch shape."""

    kind = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        labels: tuple[str, ...],
        device: torch.device,
        precision: str,
        cuda_graphs: bool = True,
        trace: bool = True,
    ) -> None:
        self.labels = labels
        self._device = device
        self.device = str(device)
        self.precision = precision
        self._model = apply_precision(model.float().eval().to(device), precision, device)
        forward = inspect.signature(self._model.forward).parameters
        self._uses_token_types = "token_type_ids" in forward
        self.graphs: CudaGraphRunner | None = None  # on CUDA: one graph per batch shape
        self._traced: torch.jit.ScriptModule | None = None  # on CPU, unless trace=False
        if trace and device.type == "cpu":
            self._traced = trace_on_cpu(self._model, self._uses_token_types)
        if cuda_graphs and device.type == "cuda":
            self.graphs = CudaGraphRunner(
                self._model, device, uses_token_types=self._uses_token_types
            )

    @classmethod
    def load(
        cls,
        model_dir: Path,
        labels: tuple[str, ...],
        *,
        device: str,
        precision: str,
        threads: int = 0,
        interop_threads: int = 0,
    ) -> TorchBackend:
        """Weights from safetensors only, never remote code. A checkpoint that lacks weights
        the classifier needs (a bare encoder, a teacher with a separate head) is refused
        rather than served with randomly initialized layers."""
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        torch_device = resolve_device(device)
        configure_torch(threads, interop_threads)
        hf_logging.disable_progress_bar()
        try:
            model, loading = AutoModelForSequenceClassification.from_pretrained(
                model_dir, use_safetensors=True, trust_remote_code=False, output_loading_info=True
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load the weights in {model_dir}: {exc}") from exc
        if loading["missing_keys"]:
            missing = sorted(loading["missing_keys"])
            raise ModelLoadError(
                f"{model_dir} lacks {len(missing)} weights of a sequence classifier "
                f"(e.g. {missing[0]!r}); refusing to serve randomly initialized layers"
            )
        if model.config.num_labels != len(labels):
            raise ModelLoadError(f"{model_dir}: {model.config.num_labels} outputs, labels {labels}")
        return cls(model, labels, torch_device, precision)

    def warm_up(self, shapes: Iterable[tuple[int, int]]) -> None:
        shapes = list(shapes)
        if self.graphs is not None:
            self.graphs.capture(shapes)
        for batch, length in shapes:
            ids = np.zeros((batch, length), dtype=np.int64)
            self.infer(TokenBatch(ids, np.ones_like(ids), ids))

    def infer_passes(self, batches: list[TokenBatch]) -> list[np.ndarray]:
        """On CPU, all passes in one call of the traced graph; else (CUDA graphs, eager) one
        `infer` each."""
        if self._traced is None:
            return [self.infer(batch) for batch in batches]
        tensors = [
            (
                torch.from_numpy(batch.input_ids),
                torch.from_numpy(batch.attention_mask),
                torch.from_numpy(batch.token_type_ids),
            )
            for batch in batches
        ]
        with torch.inference_mode():
            return [probabilities.numpy() for probabilities in self._traced(tensors)]

    def infer(self, batch: TokenBatch) -> np.ndarray:
        if self.graphs is not None:
            return self.graphs.infer(batch)
        if self._traced is not None:
            return self.infer_passes([batch])[0]
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if self._uses_token_types:
            inputs["token_type_ids"] = batch.token_type_ids
        on_gpu = self._device.type == "cuda"
        tensors = {}
        for name, array in inputs.items():
            tensor = torch.from_numpy(array)
            if on_gpu:  # page-locked, so that the copy below is asynchronous
                tensor = tensor.pin_memory().to(self._device, non_blocking=True)
            tensors[name] = tensor
        with torch.inference_mode():
            logits = self._model(**tensors).logits
            return torch.sigmoid(logits.float()).cpu().numpy()
