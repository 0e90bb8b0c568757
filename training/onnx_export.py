"""Export a served artifact to ONNX for the worker's ONNX Runtime backend (`worker/onnx_backend`).

`export_onnx` writes `model.onnx` beside the weights: inputs `input_ids`, `attention_mask`,
`token_type_ids` (int64, dynamic batch and sequence axes) and one output, `probabilities`, the
per-label sigmoid of the logits in float32, so the runtime needs no post-processing and never
applies a softmax. `quantize_int8` derives `model.int8.onnx` from it with dynamic int8
quantization of the weights (activations quantized per batch at run time).

Needs the `onnx` extra (`onnx`, `onnxruntime`); torch does the export, so this lives in training.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from schemas.artifact import (
    ONNX_FILES,
    ONNX_INPUTS,
    ONNX_META_LABELS,
    ONNX_META_WEIGHTS,
    ONNX_OUTPUT,
    WEIGHTS_FILE,
    read_contract,
    weights_version,
)
from training.data import TextDataset

log = logging.getLogger(__name__)

ONNX_FILE = ONNX_FILES["fp32"]
INT8_FILE = ONNX_FILES["int8"]
INPUT_NAMES = ONNX_INPUTS
OUTPUT_NAME = ONNX_OUTPUT
DEFAULT_OPSET = 17
# metadata written into the graph, checked by the worker's backend at load
META_WEIGHTS = ONNX_META_WEIGHTS
META_LABELS = ONNX_META_LABELS


class ProbabilityHead(nn.Module):
    """The classifier with its sigmoid: (input_ids, attention_mask, token_type_ids) -> probs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        logits = self.model(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).logits
        return torch.sigmoid(logits.float())


def _set_metadata(path: Path, metadata: dict[str, str]) -> None:
    import onnx

    graph = onnx.load(str(path))
    del graph.metadata_props[:]
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))


def store_exact_fp16(path: Path) -> int:
    """Rewrite the fp32 graph at `path` with every float32 weight that fp16 holds exactly
    stored as fp16, cast back to float32 where it is used: the same numbers, so the same
    scores, in about half the bytes (artifact weights are stored in fp16, so all of them
    qualify: the bundled model's `model.onnx` went from 17.6 to about 9 MB). ONNX Runtime and
    OpenVINO fold the casts when they load the graph. Returns how many weights were rewritten."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = onnx.load(str(path))
    kept, casts, rewritten = [], [], 0
    for tensor in graph.graph.initializer:
        values = numpy_helper.to_array(tensor)
        half = values.astype(np.float16)
        if values.dtype != np.float32 or not np.array_equal(half.astype(np.float32), values):
            kept.append(tensor)
            continue
        stored = f"{tensor.name}.fp16"
        kept.append(numpy_helper.from_array(half, stored))
        casts.append(helper.make_node("Cast", [stored], [tensor.name], to=TensorProto.FLOAT))
        rewritten += 1
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    nodes = casts + list(graph.graph.node)  # a cast before any node that reads its weight
    del graph.graph.node[:]
    graph.graph.node.extend(nodes)
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))
    return rewritten


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata `export_onnx` wrote into an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return {prop.key: prop.value for prop in graph.metadata_props}


def export_onnx(model_dir: Path, out: Path | None = None, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write the artifact in `model_dir` as ONNX (default: `model.onnx` beside the weights).

    Returns the path written. The graph carries the weights' version and the label order as
    metadata, so that the worker can refuse a `model.onnx` left over from other weights."""
    from transformers import AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    labels = list(read_contract(model_dir).labels)  # refuses what the worker would not serve
    out = Path(out) if out is not None else model_dir / ONNX_FILE
    model = AutoModelForSequenceClassification.from_pretrained(
        model_dir, use_safetensors=True, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    wrapped = ProbabilityHead(model).eval()

    # a padded example batch: 2 rows, 16 tokens, the second row half padding
    input_ids = torch.randint(1, model.config.vocab_size, (2, 16), dtype=torch.long)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    token_type_ids = torch.zeros_like(input_ids)
    dynamic = {0: "batch", 1: "sequence"}

    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the attention-mask construction indexes with aranges (never negative): not our concern
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        torch.onnx.export(
            wrapped,
            (input_ids, attention_mask, token_type_ids),
            str(out),
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_axes={**{name: dynamic for name in INPUT_NAMES}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
            external_data=False,  # one self-contained file (BERT-Tiny is far below 2 GB)
        )
    _set_metadata(
        out,
        {
            META_WEIGHTS: weights_version(model_dir / WEIGHTS_FILE),
            META_LABELS: json.dumps(labels),
        },
    )
    log.info("exported %s (opset %d)", out, opset)
    return out


def quantize_int8(onnx_path: Path, out: Path | None = None) -> Path:
    """Dynamic int8 quantization of `onnx_path` (default: `model.int8.onnx` beside it)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    onnx_path = Path(onnx_path)
    out = Path(out) if out is not None else onnx_path.with_name(INT8_FILE)
    quantize_dynamic(onnx_path, out, weight_type=QuantType.QInt8)
    _set_metadata(out, read_metadata(onnx_path))  # the same weights and labels, quantized
    log.info("quantized %s -> %s", onnx_path, out)
    return out


def score_onnx(
    path: Path, model_dir: Path, texts: Sequence[str], *, max_length: int = 128, batch: int = 64
) -> np.ndarray:
    """(len(texts), labels) probabilities of an exported graph, batches padded to the longest."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    rows = []
    for start in range(0, len(texts), batch):
        encoded = tokenizer(
            list(texts[start : start + batch]),
            padding="longest",
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        feeds = {k: v.astype(np.int64) for k, v in encoded.items() if k in names}
        rows.append(session.run([OUTPUT_NAME], feeds)[0])
    return np.vstack(rows).astype(np.float32)


def export_onnx_graphs(model_dir: Path, check: TextDataset | None) -> dict[str, Any]:
    """`model.onnx`, and `model.int8.onnx` only where it passes the accuracy rule on the labeled
    `check` data (without data it is not written: int8 is never served unchecked); then the
    fp32 graph's weights stored in fp16 where that is exact (`store_exact_fp16`). Returns the
    figures for the model card / training_info.json."""
    fp32 = export_onnx(model_dir)
    result: dict[str, Any] = {"fp32": fp32.name} | _checked_int8(model_dir, fp32, check)
    store_exact_fp16(fp32)  # after int8: the quantizer reads the weights as initializers
    log.info("ONNX export of %s: %s", model_dir, result)
    return result


def _checked_int8(model_dir: Path, fp32: Path, check: TextDataset | None) -> dict[str, Any]:
    """`model.int8.onnx` quantized from `fp32`, kept only if it passes the accuracy rule."""
    from training.precision_rule import check_precision

    result: dict[str, Any] = {}
    (model_dir / INT8_FILE).unlink(missing_ok=True)
    if check is None or check.labels is None:
        result["int8"] = "not written: no labeled data to check it on (--onnx-check-data)"
        return result
    int8 = quantize_int8(fp32)
    contract = read_contract(model_dir)
    reference = score_onnx(fp32, model_dir, check.texts)
    try:
        verdict = check_precision(
            reference,
            score_onnx(int8, model_dir, check.texts),
            check.labels,
            contract.labels,
            contract.label_thresholds,
        )
    except ValueError as exc:  # e.g. no label with both classes in the check data
        int8.unlink()
        result["int8"] = f"not written: the accuracy rule could not be applied ({exc})"
        return result
    result["int8_check"] = verdict.as_dict() | {"comments": len(check.texts)}
    if verdict.passed:
        result["int8"] = int8.name
    else:
        int8.unlink()
        result["int8"] = "not written: it failed the accuracy rule"
    return result
