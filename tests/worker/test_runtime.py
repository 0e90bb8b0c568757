"""Backend, device and precision chosen from the machine and the artifact, with reasons."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from worker.backends.backend import ModelLoadError
from worker.backends.hardware import CpuInfo
from worker.backends.runtime import (
    auto_candidates,
    choose_backend,
    choose_device,
    choose_onnx_precision,
    choose_runtime,
)

AMX_XEON = CpuInfo("Intel Xeon (Sapphire Rapids)", frozenset({"avx2", "avx512f", "amx_bf16"}))
AVX2_EPYC = CpuInfo("AMD EPYC (Zen 3)", frozenset({"avx2", "fma"}))


@pytest.mark.parametrize(
    ("cpu", "files", "onnx", "openvino", "expected"),
    [
        (AMX_XEON, ("model.onnx", "model.int8.onnx"), True, True,
         ["torch bf16", "onnx int8", "openvino bf16"]),
        (AVX2_EPYC, ("model.onnx", "model.int8.onnx"), True, True,
         ["torch fp32", "onnx int8", "openvino fp32"]),
        (AVX2_EPYC, ("model.onnx",), True, True, ["torch fp32", "onnx fp32", "openvino fp32"]),
        # an artifact exported with only its int8 graph: openvino reads the fp32 one
        (AMX_XEON, ("model.int8.onnx",), True, True, ["torch bf16", "onnx int8"]),
        (AMX_XEON, ("model.onnx",), False, True, ["torch bf16", "openvino bf16"]),
        (AMX_XEON, ("model.onnx",), True, False, ["torch bf16", "onnx fp32"]),
        (AMX_XEON, (), True, True, ["torch bf16"]),
    ],
)  # fmt: skip
def test_auto_candidates_follow_the_artifact_and_the_install(
    tmp_path: Path,
    cpu: CpuInfo,
    files: tuple[str, ...],
    onnx: bool,
    openvino: bool,
    expected: list[str],
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"graph")
    found = auto_candidates(tmp_path, "auto", cpu, onnx_installed=onnx, openvino_installed=openvino)
    assert [c.name for c in found] == expected


def test_auto_candidates_keep_an_explicit_precision_where_a_backend_serves_it(
    tmp_path: Path,
) -> None:
    for name in ("model.onnx", "model.int8.onnx"):
        (tmp_path / name).write_bytes(b"graph")

    def names(precision: str, cpu: CpuInfo = AMX_XEON) -> list[str]:
        found = auto_candidates(
            tmp_path, precision, cpu, onnx_installed=True, openvino_installed=True
        )
        return [c.name for c in found]

    assert names("fp32") == ["torch fp32", "onnx fp32", "openvino fp32"]
    assert names("int8") == ["torch int8", "onnx int8"]
    assert names("bf16") == ["torch bf16", "openvino bf16"]
    # emulated bf16 is several times slower: never an openvino candidate without native bf16
    assert names("bf16", AVX2_EPYC) == ["torch bf16"]


def test_explicit_backend_and_device_pass_through() -> None:
    choice = choose_backend("onnx", "cpu")
    assert (choice.value, choice.reason) == ("onnx", "set explicitly")
    assert choose_backend("auto", "cuda").value == "torch"
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


def test_runtime_with_several_candidates_is_pending_until_measured(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.backends.runtime

    target = Path(shutil.copytree(tiny_model_dir, tmp_path / "artifact"))
    (target / "model.onnx").write_bytes(b"graph")
    (target / "model.int8.onnx").write_bytes(b"graph")
    monkeypatch.setattr(worker.backends.runtime, "read_cpu", lambda: AVX2_EPYC)
    monkeypatch.setattr(worker.backends.runtime, "onnxruntime_installed", lambda: True)
    monkeypatch.setattr(worker.backends.runtime, "openvino_installed", lambda: True)
    runtime = choose_runtime(
        target, backend="auto", device="cpu", precision="auto", threads=0,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    assert runtime.pending and runtime.backend.value == "auto"
    assert "not measured yet" in runtime.backend.reason
    assert [c.name for c in runtime.candidates] == ["torch fp32", "onnx int8", "openvino fp32"]
    assert runtime.threads.value >= 1


def test_a_setting_no_rule_accepts_is_a_load_error(tiny_model_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="precision"):
        choose_runtime(tiny_model_dir, backend="torch", device="cpu", precision="fp8", threads=1)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (("model.onnx", "model.int8.onnx"), ["onnx int8", "openvino bf16"]),
        (("model.int8.onnx",), ["onnx int8"]),
        ((), []),
    ],
)
def test_without_torch_auto_considers_only_the_installed_backends(
    tmp_path: Path, files: tuple[str, ...], expected: list[str]
) -> None:
    for name in files:
        (tmp_path / name).write_bytes(b"graph")
    found = auto_candidates(
        tmp_path, "auto", AMX_XEON, onnx_installed=True, openvino_installed=True,
        torch_installed=False,
    )  # fmt: skip
    assert [c.name for c in found] == expected


@pytest.mark.parametrize("torch", [True, False], ids=["with-torch", "cpu-image"])
def test_auto_measures_openvino_for_the_default_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch: bool
) -> None:
    """The bundled model ships its fp32 graph: with ONNX Runtime and OpenVINO installed (the cpu
    image, without torch, and the dev install, with it), auto on this CPU measures OpenVINO
    against ONNX Runtime int8 instead of serving ONNX Runtime unmeasured."""
    import worker.backends.runtime
    from worker.backends.model import DEFAULT_MODEL_DIR

    # both are always installed for the tests (onnxruntime: a dependency; openvino: the dev
    # extra): a missing one is a failure here, not a skip
    assert worker.backends.runtime.onnxruntime_installed()
    assert worker.backends.runtime.openvino_installed()
    monkeypatch.setattr(worker.backends.runtime, "torch_installed", lambda: torch)
    runtime = choose_runtime(
        DEFAULT_MODEL_DIR, backend="auto", device="cpu", precision="auto", threads=1,
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    openvino = "openvino bf16" if runtime.cpu.native_bf16 else "openvino fp32"
    assert runtime.pending and "not measured yet" in runtime.backend.reason
    assert [c.name for c in runtime.candidates if c.backend != "torch"] == ["onnx int8", openvino]
    assert any(c.backend == "torch" for c in runtime.candidates) is torch


@pytest.fixture
def no_torch_gpu_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with an NVIDIA driver, ONNX Runtime and no torch (the CPU image on a GPU node)."""
    import worker.backends.runtime

    driver = tmp_path / "nvidia-version"
    driver.write_text("NVRM version: 550\n")
    monkeypatch.setattr(worker.backends.runtime, "NVIDIA_DRIVER", driver)
    monkeypatch.setattr(worker.backends.runtime, "GPU_MARKERS", (driver,))
    monkeypatch.setattr(worker.backends.runtime, "read_cpu", lambda: AVX2_EPYC)
    monkeypatch.setattr(worker.backends.runtime, "torch_installed", lambda: False)
    monkeypatch.setattr(worker.backends.runtime, "onnxruntime_installed", lambda: True)
    monkeypatch.setattr(worker.backends.runtime, "openvino_installed", lambda: False)


@pytest.mark.usefixtures("no_torch_gpu_host")
def test_without_torch_a_gpu_host_serves_on_the_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """device auto: CPU (torch serves CUDA, and is absent), never an import of torch; an
    explicit cuda device or torch backend: one line saying what to install."""
    target = Path(shutil.copytree(tiny_model_dir, tmp_path / "artifact"))
    (target / "model.int8.onnx").write_bytes(b"graph")
    runtime = choose_runtime(target, backend="auto", device="auto", precision="auto", threads=1)
    assert (runtime.backend.value, runtime.device.value) == ("onnx", "cpu")
    assert runtime.device.reason == "auto: an NVIDIA driver, but torch is not installed"
    with pytest.raises(ModelLoadError, match=r"device 'cuda' is served by torch, which is not"):
        choose_runtime(target, backend="auto", device="cuda", precision="auto", threads=1)
    with pytest.raises(ModelLoadError, match=r"backend torch: torch is not installed: pip"):
        choose_runtime(target, backend="torch", device="cpu", precision="auto", threads=1)


def test_torch_without_transformers_cannot_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch backend loads through transformers: torch alone is no candidate."""
    import importlib.util

    from worker.backends.runtime import torch_installed

    assert torch_installed()  # both installed here (`make test`)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "transformers" else real(name)
    )
    assert not torch_installed()
