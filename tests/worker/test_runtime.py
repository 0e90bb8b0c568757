"""Backend, device and precision chosen from the machine and the artifact, with reasons."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.backends.backend import ModelLoadError
from worker.backends.hardware import CpuInfo
from worker.backends.runtime import (
    choose_backend,
    choose_device,
    choose_onnx_precision,
    choose_runtime,
)

AMX_XEON = CpuInfo("Intel Xeon (Sapphire Rapids)", frozenset({"avx2", "avx512f", "amx_bf16"}))
AVX2_EPYC = CpuInfo("AMD EPYC (Zen 3)", frozenset({"avx2", "fma"}))


@pytest.mark.parametrize(
    ("cpu", "device", "has_onnx", "installed", "expected", "why"),
    [
        (AVX2_EPYC, "cpu", True, True, "onnx", "no native bf16"),
        (AMX_XEON, "cpu", True, True, "torch", "native bf16"),
        (AVX2_EPYC, "cuda", True, True, "torch", "GPU"),
        (AVX2_EPYC, "cpu", False, True, "torch", "no ONNX graph"),
        (AVX2_EPYC, "cpu", True, False, "torch", "not installed"),
    ],
)
def test_auto_backend(
    cpu: CpuInfo, device: str, has_onnx: bool, installed: bool, expected: str, why: str
) -> None:
    choice = choose_backend("auto", device, cpu, has_onnx=has_onnx, onnx_installed=installed)
    assert choice.value == expected
    assert why in choice.reason


def test_explicit_backend_and_device_pass_through() -> None:
    choice = choose_backend("onnx", "cpu", AMX_XEON, has_onnx=False, onnx_installed=False)
    assert (choice.value, choice.reason) == ("onnx", "set explicitly")
    assert choose_device("cpu", gpu_present=True).value == "cpu"
    assert choose_device("auto", gpu_present=True).value == "cuda"
    assert choose_device("auto", gpu_present=False).value == "cpu"


def test_onnx_int8_only_where_the_export_kept_it() -> None:
    assert choose_onnx_precision("auto", has_int8=True).value == "int8"
    assert choose_onnx_precision("auto", has_int8=False).value == "fp32"
    assert choose_onnx_precision("fp32", has_int8=True).value == "fp32"


def test_runtime_for_an_artifact_without_onnx_is_torch(tiny_model_dir: Path) -> None:
    runtime = choose_runtime(
        tiny_model_dir, backend="auto", device="cpu", precision="auto", threads=1
    )
    assert runtime.backend.value == "torch"
    assert runtime.threads.value == 1
    assert runtime.precision.value == ("bf16" if runtime.cpu.native_bf16 else "fp32")
    assert set(runtime.describe()) == {"backend", "device", "precision", "threads", "cpu"}


def test_runtime_picks_onnx_int8_on_a_cpu_without_bf16(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.backends.runtime

    target = Path(shutil.copytree(tiny_model_dir, tmp_path / "artifact"))
    (target / "model.onnx").write_bytes(b"graph")
    (target / "model.int8.onnx").write_bytes(b"graph")
    monkeypatch.setattr(worker.backends.runtime, "read_cpu", lambda: AVX2_EPYC)
    monkeypatch.setattr(worker.backends.runtime, "onnxruntime_installed", lambda: True)
    runtime = choose_runtime(target, backend="auto", device="cpu", precision="auto", threads=0)
    assert (runtime.backend.value, runtime.precision.value) == ("onnx", "int8")
    assert runtime.threads.value >= 1


def test_a_setting_no_rule_accepts_is_a_load_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="precision"):
        choose_runtime(tiny_model_dir, backend="torch", device="cpu", precision="fp8", threads=1)
