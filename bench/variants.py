"""Backends and precisions side by side, model-only, each held to the accuracy rule.

Every variant runs at the worker's thread count on the same comments, interleaved over rounds
(the best round counts: on a shared machine interference only slows a run down). Reduced
precisions are compared with torch fp32 on the labeled validation split by the rule in
`training.precision_rule`. A precision this CPU cannot compute natively is skipped, with the
reason, rather than timed for minutes (bf16 without AMX/AVX512-BF16 ran 6x slower than fp32).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from bench.ceiling import run_ceiling
from schemas.artifact import ONNX_FILES
from training.data import TextDataset
from training.precision_rule import check_precision
from worker.backends.model import ServedModel, load_from_settings, resolve_source
from worker.backends.runtime import Runtime, onnxruntime_installed, openvino_installed
from worker.config import Settings

log = logging.getLogger(__name__)

REFERENCE = ("torch", "fp32")


def onnx_artifact(artifact: Path, workdir: Path, validation: TextDataset | None) -> Path | None:
    """The artifact with its ONNX graphs: as it is if it has the fp32 one, else a copy in
    `workdir` with the fp32 graph exported, so that ONNX fp32 is timed too (an artifact exported
    without it). The artifact's own int8 graph is kept as it is (it is the one the
    worker serves, and the variants table holds it to the accuracy rule anyway); an artifact
    without one gets one only where it passes the rule on `validation`."""
    if (artifact / ONNX_FILES["fp32"]).is_file():
        return artifact
    if not onnxruntime_installed():
        return None
    from training.onnx_export import export_onnx, export_onnx_graphs

    copy = workdir / "onnx-artifact"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(artifact, copy)
    if (copy / ONNX_FILES["int8"]).is_file():
        export_onnx(copy)  # not quantized again and scored twice more on the validation split
    else:
        export_onnx_graphs(copy, validation)
    return copy


def plan_variants(
    runtime: Runtime, onnx_dir: Path | None
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(backend, precision) pairs to time, and the skipped ones with their reason."""
    gpu = runtime.device.value.startswith("cuda")
    planned, skipped = [REFERENCE], {}
    if gpu:
        planned += [("torch", "fp16"), ("torch", "bf16")]
        return planned, skipped
    if runtime.cpu.native_bf16:
        planned.append(("torch", "bf16"))
    else:
        skipped["torch bf16"] = "no native bf16 on this CPU (no amx_bf16 or avx512_bf16)"
    planned.append(("torch", "int8"))
    if onnx_dir is None:
        skipped["onnx"] = "onnxruntime is not installed (extra `onnx`)"
        skipped["openvino"] = "no fp32 ONNX graph to read (its export needs onnxruntime)"
        return planned, skipped
    for precision, name in ONNX_FILES.items():
        if (onnx_dir / name).is_file():
            planned.append(("onnx", precision))
        else:
            skipped[f"onnx {precision}"] = f"no {name} (int8 is kept only if it passes the rule)"
    if not openvino_installed():
        skipped["openvino"] = "openvino is not installed (extra `openvino`)"
    elif not (onnx_dir / ONNX_FILES["fp32"]).is_file():
        skipped["openvino"] = f"no {ONNX_FILES['fp32']} (openvino reads the fp32 graph)"
    else:
        planned.append(("openvino", "fp32"))
        if runtime.cpu.native_bf16:
            planned.append(("openvino", "bf16"))
        else:
            skipped["openvino bf16"] = "no native bf16 on this CPU (no amx_bf16 or avx512_bf16)"
    return planned, skipped


def compare_variants(
    settings: Settings,
    runtime: Runtime,
    texts: list[str],
    validation: TextDataset | None,
    workdir: Path,
    rounds: int = 2,
) -> dict[str, Any]:
    artifact = resolve_source(settings.model)
    onnx_dir = None if runtime.device.value.startswith("cuda") else (
        onnx_artifact(artifact, workdir, validation)
    )  # fmt: skip
    planned, skipped = plan_variants(runtime, onnx_dir)
    threads = runtime.threads.value
    models: dict[str, ServedModel] = {}
    for backend, precision in planned:
        source = str(onnx_dir if backend in ("onnx", "openvino") else artifact)
        models[f"{backend} {precision}"] = load_from_settings(
            settings.model_copy(update={"model": source}),
            backend=backend,
            precision=precision,
            threads=threads,
        )
    speeds: dict[str, list[float]] = {name: [] for name in models}
    for round_ in range(rounds):
        for name, model in models.items():
            log.info("variant %s, round %d", name, round_ + 1)
            speeds[name].append(
                run_ceiling(model, texts, settings.max_batch_size)["comments_per_s"]
            )
    reference_name = " ".join(REFERENCE)
    base_speed = max(speeds[reference_name])
    variants: dict[str, Any] = {}
    reference_scores: np.ndarray | None = None
    for name, model in models.items():
        entry: dict[str, Any] = {
            "comments_per_s": max(speeds[name]),
            "runs": [round(s, 1) for s in speeds[name]],
            "vs_torch_fp32": max(speeds[name]) / base_speed,
        }
        if validation is not None and validation.labels is not None:
            scores = model.score(validation.texts)
            if reference_scores is None:
                reference_scores = scores
            check = check_precision(
                reference_scores,
                scores,
                validation.labels,
                model.contract.labels,
                model.contract.label_thresholds,
            )
            entry["check"] = check.as_dict()
        variants[name] = entry
    return {
        "threads": threads,
        "comments": len(texts),
        "validation_comments": len(validation.texts) if validation is not None else 0,
        "variants": variants,
        "skipped": skipped,
        "best": max(variants, key=lambda n: variants[n]["comments_per_s"]),
    }
