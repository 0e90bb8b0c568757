"""Which backend, device, precision and thread count serve the model here, and why.

`auto` settings are resolved from the machine (`worker.backends.hardware`) and from what the
artifact holds; explicit settings pass through. Every choice carries its reason, for the
start-up log and `moderation-worker info`. The rules follow the measurements in
docs/benchmarks.md: on a CPU with native bf16 (AMX, AVX512-BF16) torch in bf16 is the fastest;
without it ONNX Runtime beats eager torch fp32, and its int8 graph is used where the export kept
it (it passed the accuracy rule there).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from schemas.artifact import ONNX_FILES
from worker.backends.backend import ModelLoadError
from worker.backends.hardware import (
    Choice,
    CpuInfo,
    choose_precision,
    choose_threads,
    read_cpu,
    usable_cpus,
)

NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
# Any of these says a GPU may be reachable (WSL2 has /dev/dxg and no /proc/driver/nvidia);
# with none, an explicit `cuda` is refused at once, before torch is imported.
GPU_MARKERS = (NVIDIA_DRIVER, Path("/dev/nvidiactl"), Path("/dev/dxg"))


def gpu_may_be_present() -> bool:
    return any(marker.exists() for marker in GPU_MARKERS)


@dataclass(frozen=True)
class Runtime:
    backend: Choice[str]
    device: Choice[str]
    precision: Choice[str]
    threads: Choice[int]
    cpu: CpuInfo

    def describe(self) -> dict[str, str]:
        return {
            "backend": str(self.backend),
            "device": str(self.device),
            "precision": str(self.precision),
            "threads": str(self.threads),
            "cpu": self.cpu.model,
        }


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def choose_device(
    requested: str, gpu_present: bool, *, gpu_may_be_present: bool = True
) -> Choice[str]:
    """`ValueError` for an explicit CUDA device on a machine with no trace of a GPU driver."""
    if requested.startswith("cuda") and not gpu_may_be_present:
        raise ValueError(
            f"device {requested!r} requested but this machine has no NVIDIA GPU driver "
            f"({NVIDIA_DRIVER} is missing); use --device cpu or auto"
        )
    if requested != "auto":
        return Choice(requested, "set explicitly")
    if gpu_present:
        return Choice("cuda", "auto: an NVIDIA driver is present")
    return Choice("cpu", "auto: no GPU")


def choose_backend(
    requested: str, device: str, cpu: CpuInfo, *, has_onnx: bool, onnx_installed: bool
) -> Choice[str]:
    if requested != "auto":
        return Choice(requested, "set explicitly")
    if device.startswith("cuda"):
        return Choice("torch", "auto: on a GPU the torch backend serves")
    if not has_onnx:
        return Choice("torch", "auto: the artifact has no ONNX graph")
    if not onnx_installed:
        return Choice("torch", "auto: onnxruntime is not installed (extra `onnx`)")
    if cpu.native_bf16:
        return Choice("torch", "auto: native bf16 on this CPU, where torch bf16 is fastest")
    return Choice("onnx", "auto: no native bf16 on this CPU, where ONNX Runtime is fastest")


def choose_onnx_precision(requested: str, has_int8: bool) -> Choice[str]:
    if requested != "auto":
        return Choice(requested, "set explicitly")
    if has_int8:
        return Choice("int8", "auto: the artifact's int8 graph passed the accuracy rule at export")
    return Choice("fp32", f"auto: the artifact has no {ONNX_FILES['int8']}")


def choose_runtime(
    model_dir: Path, *, backend: str, device: str, precision: str, threads: int | str
) -> Runtime:
    """Resolve `auto` settings for serving the artifact in `model_dir` on this machine;
    `ModelLoadError` for a setting no rule accepts."""
    try:
        return _choose_runtime(
            model_dir, backend=backend, device=device, precision=precision, threads=threads
        )
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None


def _choose_runtime(
    model_dir: Path, *, backend: str, device: str, precision: str, threads: int | str
) -> Runtime:
    cpu = read_cpu()
    chosen_device = choose_device(
        device, NVIDIA_DRIVER.exists(), gpu_may_be_present=gpu_may_be_present()
    )
    chosen_backend = choose_backend(
        backend,
        chosen_device.value,
        cpu,
        has_onnx=any((model_dir / name).is_file() for name in ONNX_FILES.values()),
        onnx_installed=onnxruntime_installed(),
    )
    if chosen_backend.value == "onnx":
        chosen_precision = choose_onnx_precision(
            precision, (model_dir / ONNX_FILES["int8"]).is_file()
        )
    else:
        cuda_bf16 = False
        if chosen_device.value.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                cuda_bf16 = torch.cuda.is_bf16_supported()
            elif device == "auto":
                chosen_device = Choice("cpu", "auto: an NVIDIA driver, but torch sees no CUDA")
        chosen_precision = choose_precision(
            precision, chosen_device.value, cpu, cuda_bf16=cuda_bf16
        )
    chosen_threads = choose_threads(threads if threads else "auto", usable_cpus())
    return Runtime(chosen_backend, chosen_device, chosen_precision, chosen_threads, cpu)
