"""OpenVINO backend: the artifact's exported fp32 ONNX graph compiled by OpenVINO's CPU plugin.

The graph is `model.onnx` (written by `moderation-train export --onnx`), read as it is: reading and
compiling it at start took 0.26 s against 0.09 s for an IR written beforehand (AMD EPYC), too
little to ship a second copy of the weights. The int8 graph is not read: OpenVINO ran it at 0.38x
ONNX Runtime's speed on it. The shapes stay dynamic (batch and length);
`warm_up` runs each bucket shape once so that the plugin has its kernels for it before the first
request. Precision is OpenVINO's inference precision: `bf16` computes in bf16 on a CPU with
AMX-BF16 or AVX512-BF16 (fp32 weights, bf16 arithmetic), `fp32` forces fp32 (OpenVINO would
otherwise pick bf16 by itself on such a CPU). Importing this module loads neither torch nor
onnxruntime. Needs the `openvino` extra.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from schemas.artifact import (
    ONNX_FILES,
    ONNX_INPUTS,
    ONNX_OUTPUT,
)
from worker.backends.backend import Backend, ModelLoadError, TokenBatch
from worker.backends.onnx_metadata import OnnxMetadataError, check_exported_from, read_metadata

GRAPH_FILE = ONNX_FILES["fp32"]
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}  # ours -> OpenVINO's INFERENCE_PRECISION_HINT
EXPORT_HINT = "export it with `moderation-train export --onnx`"
INSTALL_HINT = "pip install 'moderation-worker[openvino]'"


class OpenVinoBackend(Backend):
    """One compiled model and one infer request; `infer` from one thread at a time."""

    kind = "openvino"
    device = "cpu"

    def __init__(
        self, compiled: Any, labels: tuple[str, ...], *, precision: str, path: Path
    ) -> None:
        self.compiled = compiled
        self.labels = labels
        self.precision = precision
        self.path = path
        self._inputs = tuple(port.get_any_name() for port in compiled.inputs)
        self._request = compiled.create_infer_request()

    @classmethod
    def load(
        cls,
        model_dir: Path,
        labels: tuple[str, ...],
        *,
        threads: int,
        precision: str = "fp32",
        device: str = "cpu",
    ) -> OpenVinoBackend:
        """Read and compile `model.onnx`; every refusal is a one-line `ModelLoadError`: no
        openvino, an unsupported precision or device, a missing or unreadable graph, a graph
        exported from other weights or with other labels than the artifact's."""
        model_dir = Path(model_dir)
        if device != "cpu":
            raise ModelLoadError(f"the openvino backend runs on cpu, not {device!r}")
        if precision not in PRECISIONS:
            raise ModelLoadError(
                f"the openvino backend serves precision {' or '.join(PRECISIONS)}, "
                f"not {precision!r}"
            )
        if threads < 1:
            raise ModelLoadError(f"the openvino backend needs threads >= 1, got {threads}")
        path = model_dir / GRAPH_FILE
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing (openvino reads it): {EXPORT_HINT}")
        check_metadata(path, model_dir, labels)
        try:
            import openvino as ov
        except ImportError:
            raise ModelLoadError(f"openvino is not installed: {INSTALL_HINT}") from None
        config = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            # the CPUs are shared with the event loop and the tokenizer thread, and in a
            # container with other processes: no pinning of the inference threads
            "ENABLE_CPU_PINNING": False,
        }
        try:
            core = ov.Core()
            model = core.read_model(str(path))
            compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError with multi-line messages
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{path} cannot be compiled by openvino: {first}") from None
        check_ports(compiled, path, labels)
        return cls(compiled, tuple(labels), precision=precision, path=path)

    def warm_up(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Run each (batch size, length) shape once: the plugin prepares kernels per shape."""
        for batch_size, length in shapes:
            ones = np.ones((batch_size, length), dtype=np.int64)
            self.infer(TokenBatch(ones, ones, np.zeros_like(ones)))

    def infer(self, batch: TokenBatch) -> np.ndarray:
        """(batch, labels) float32 probabilities, the graph's own sigmoid output. The request
        runs with the GIL released."""
        feeds = {
            name: np.ascontiguousarray(getattr(batch, name), dtype=np.int64)
            for name in self._inputs
        }
        self._request.infer(feeds, share_inputs=True)
        return np.array(self._request.get_output_tensor(0).data, dtype=np.float32)


def check_metadata(path: Path, model_dir: Path, labels: tuple[str, ...]) -> None:
    """Refuse a graph exported with other labels or from other weights than the artifact's."""
    try:
        meta = read_metadata(path)
    except (OSError, OnnxMetadataError) as exc:
        raise ModelLoadError(f"{path} is not a readable ONNX file ({exc}): {EXPORT_HINT}") from None
    check_exported_from(path, meta, model_dir, labels, EXPORT_HINT)


def check_ports(compiled: Any, path: Path, labels: tuple[str, ...]) -> None:
    """Refuse graphs that would score silently wrong: other inputs, outputs or label count."""
    inputs = {port.get_any_name() for port in compiled.inputs}
    if not inputs <= set(ONNX_INPUTS) or "input_ids" not in inputs:
        raise ModelLoadError(
            f"{path} takes inputs {sorted(inputs)}, expected {list(ONNX_INPUTS)}: {EXPORT_HINT}"
        )
    outputs = [port for port in compiled.outputs if ONNX_OUTPUT in port.get_names()]
    if len(compiled.outputs) != 1 or not outputs:
        names = sorted(name for port in compiled.outputs for name in port.get_names())
        raise ModelLoadError(f"{path} has outputs {names}, not one {ONNX_OUTPUT!r}: {EXPORT_HINT}")
    width = outputs[0].get_partial_shape()[-1]
    if width.is_static and width.get_length() != len(labels):
        raise ModelLoadError(
            f"{path} scores {width.get_length()} labels, the artifact names {len(labels)}"
        )
