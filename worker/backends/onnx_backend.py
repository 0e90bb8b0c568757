"""ONNX Runtime backend: the exported graph (`training/onnx_export.py`) served without torch.

The artifact directory holds `model.onnx` (fp32) and optionally `model.int8.onnx` (dynamic int8),
both written by the export, whose graph already ends in the per-label sigmoid: `infer` feeds the
three token arrays and returns the `probabilities` output as it is. Importing this module loads
neither torch nor transformers (only numpy and onnxruntime), so a worker serving ONNX starts
fast and small. Needs the `onnx` extra.
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
from worker.backends.onnx_metadata import check_exported_from

MODEL_FILES = ONNX_FILES
OUTPUT_NAME = ONNX_OUTPUT
INPUT_NAMES = ONNX_INPUTS
EXPORT_HINT = (
    "export it with training.onnx_export.export_onnx(model_dir)"
    " (and quantize_int8(model_dir / 'model.onnx') for int8)"
)


class OnnxBackend(Backend):
    """One ONNX Runtime session over an exported artifact; `infer` from one thread at a time."""

    kind = "onnx"

    def __init__(
        self, session: Any, labels: tuple[str, ...], *, device: str, precision: str, path: Path
    ) -> None:
        self.session = session
        self.labels = labels
        self.device = device
        self.precision = precision
        self.path = path
        self._inputs = tuple(i.name for i in session.get_inputs())

    @classmethod
    def load(
        cls,
        model_dir: Path,
        labels: tuple[str, ...],
        *,
        threads: int,
        precision: str = "fp32",
        device: str = "cpu",
    ) -> OnnxBackend:
        """Open the exported graph for `precision` (fp32: model.onnx, int8: model.int8.onnx).

        Every refusal is a `ModelLoadError` with a one-line message: an unsupported precision
        or device, a missing or unreadable file, a graph exported from other weights or with
        other labels than the artifact's."""
        model_dir = Path(model_dir)
        if precision not in MODEL_FILES:
            raise ModelLoadError(
                f"the onnx backend serves precision {' or '.join(MODEL_FILES)}, not {precision!r}"
            )
        if threads < 1:
            raise ModelLoadError(f"the onnx backend needs threads >= 1, got {threads}")
        path = model_dir / MODEL_FILES[precision]
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing: {EXPORT_HINT}")
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelLoadError(
                "onnxruntime is not installed: pip install 'moderation-worker[onnx]'"
            ) from None

        providers = _providers(ort, device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{path} cannot be loaded by onnxruntime: {first}") from None

        _check_graph(session, path, model_dir, labels)
        return cls(
            session, tuple(labels), device=_device_name(device), precision=precision, path=path
        )

    def warm_up(self, shapes: Iterable[tuple[int, int]]) -> None:
        """Run each (batch size, length) shape once: ORT allocates and plans per shape."""
        for batch_size, length in shapes:
            ones = np.ones((batch_size, length), dtype=np.int64)
            self.infer(TokenBatch(ones, ones, np.zeros_like(ones)))

    def infer(self, batch: TokenBatch) -> np.ndarray:
        """(batch, labels) float32 probabilities, the graph's own sigmoid output."""
        feeds = {
            name: np.ascontiguousarray(getattr(batch, name), dtype=np.int64)
            for name in self._inputs
        }
        (probabilities,) = self.session.run([OUTPUT_NAME], feeds)
        return np.asarray(probabilities, dtype=np.float32)


def _device_name(device: str) -> str:
    return "cpu" if device == "cpu" else (device if ":" in device else f"{device}:0")


def _providers(ort: Any, device: str) -> list[Any]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    kind, _, index = device.partition(":")
    if kind != "cuda":
        raise ModelLoadError(f"the onnx backend runs on cpu or cuda, not {device!r}")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ModelLoadError(
            "device cuda asked, but this onnxruntime has no CUDAExecutionProvider "
            "(install onnxruntime-gpu instead of onnxruntime)"
        )
    return [("CUDAExecutionProvider", {"device_id": int(index or 0)}), "CPUExecutionProvider"]


def _check_graph(session: Any, path: Path, model_dir: Path, labels: tuple[str, ...]) -> None:
    """Refuse graphs that would score silently wrong: other inputs, outputs, labels or weights."""
    inputs = {i.name for i in session.get_inputs()}
    if not inputs <= set(INPUT_NAMES) or "input_ids" not in inputs:
        raise ModelLoadError(
            f"{path} takes inputs {sorted(inputs)}, expected {list(INPUT_NAMES)}: {EXPORT_HINT}"
        )
    outputs = {o.name: o for o in session.get_outputs()}
    if OUTPUT_NAME not in outputs:
        raise ModelLoadError(
            f"{path} has no {OUTPUT_NAME!r} output (outputs {sorted(outputs)}): {EXPORT_HINT}"
        )
    width = outputs[OUTPUT_NAME].shape[-1]
    if isinstance(width, int) and width != len(labels):
        raise ModelLoadError(f"{path} scores {width} labels, the artifact names {len(labels)}")
    meta = session.get_modelmeta().custom_metadata_map
    check_exported_from(path, meta, model_dir, labels, EXPORT_HINT)
