"""Which backend, device, precision and thread count serve the model here, and why.

`auto` settings are resolved from the machine (`worker.backends.hardware`) and from what the
artifact holds; explicit settings pass through. Every choice carries its reason, for the
start-up log and `moderation-worker info`.

The backend on a CPU is chosen by measurement, not by rule: which backend is fastest differs
between CPUs of the same flags and between library versions (docs/benchmarks.md). `auto`
lists the candidates this artifact and this install allow (`auto_candidates`), each in the
precision its own rule picks (torch: bf16 with native bf16, else fp32; ONNX Runtime: the int8
graph where the export kept it, as it passed the accuracy rule there, else fp32; OpenVINO: bf16
with native bf16, else fp32). With one candidate there is nothing to measure. With several, the
choice remembered for this machine (`worker.backends.choice_cache`) is used; without one the
runtime stays `auto` with its candidates, and `worker.backends.autoselect` times them at start.
On a GPU the torch backend serves.

torch is optional for serving (the CPU image has none, `pip install moderation-worker` brings
ONNX Runtime only): nothing here imports it unless CUDA is asked for and it is installed.
Without it, `auto` considers only the installed backends; an artifact that only torch can serve
(no ONNX graph), an explicit `torch` backend and an explicit CUDA device are refused with one
line saying what to install or export.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from schemas.artifact import ONNX_FILES
from worker.backends.backend import ModelLoadError
from worker.backends.choice_cache import Measured, cache_key, default_cache_dir, read_choice
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


AUTO = "auto"  # the backend and precision of a runtime whose candidates are still to be timed
LIBRARIES = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino"}


@dataclass(frozen=True)
class Candidate:
    """A backend `auto` may pick, in the precision its own rule chose."""

    backend: str
    precision: Choice[str]

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision.value}"


@dataclass(frozen=True)
class Runtime:
    backend: Choice[str]
    device: Choice[str]
    precision: Choice[str]
    threads: Choice[int]
    cpu: CpuInfo
    # backend `auto`, not yet measured here: what `worker.backends.autoselect` times at start
    candidates: tuple[Candidate, ...] = ()
    cache_key: dict[str, object] | None = None  # where the measured choice is remembered
    measured: Measured | None = None  # the measurement behind an `auto` choice

    @property
    def pending(self) -> bool:
        """The backend is to be measured at start (several candidates, nothing remembered)."""
        return bool(self.candidates)

    def describe(self) -> dict[str, str]:
        return {
            "backend": str(self.backend),
            "device": str(self.device),
            "precision": str(self.precision),
            "threads": str(self.threads),
            "cpu": self.cpu.model,
        }


# What to do where torch is needed but not installed (the CPU image, a plain pip install).
INSTALL_TORCH = (
    "pip install 'moderation-worker[torch]', or use the image built with VARIANT=cpu-torch "
    "or VARIANT=cuda"
)


def torch_installed() -> bool:
    """Whether the torch backend can load here: torch and transformers (the extra `torch`),
    checked without importing them (seconds). torch alone (e.g. `make install`'s pinned torch
    beside an install without the extra) cannot load a model."""
    return all(importlib.util.find_spec(name) is not None for name in ("torch", "transformers"))


def onnxruntime_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def library_version(backend: str) -> str:
    """The installed version of a backend's library (part of the cache key: an upgrade can
    change which is fastest), read without importing it."""
    try:
        return metadata.version(LIBRARIES[backend])
    except metadata.PackageNotFoundError:
        return "?"


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


def choose_backend(requested: str, device: str) -> Choice[str]:
    """An explicit backend, or torch on a GPU (on a CPU `auto` is measured: `auto_candidates`)."""
    if requested != AUTO:
        return Choice(requested, "set explicitly")
    if device.startswith("cuda"):
        return Choice("torch", "auto: on a GPU the torch backend serves")
    raise ValueError("backend auto on a CPU is chosen by measurement, not by choose_backend")


OPENVINO_PRECISIONS = ("fp32", "bf16")


def check_openvino(model_dir: Path, device: str) -> None:
    """An explicit `openvino` that cannot serve here: refused at once, before anything loads."""
    if not device.startswith("cpu"):
        raise ValueError(f"the openvino backend runs on cpu, not {device!r}")
    graph = model_dir / ONNX_FILES["fp32"]
    if not graph.is_file():
        raise ValueError(
            f"backend openvino reads {graph}, which is missing: export the artifact with "
            "`moderation-train export --onnx`"
        )
    if not openvino_installed():
        raise ValueError(
            "backend openvino: openvino is not installed: pip install 'moderation-worker[openvino]'"
        )


def choose_openvino_precision(requested: str, cpu: CpuInfo) -> Choice[str]:
    """bf16 inference precision with native bf16 (on an AMD EPYC with avx512_bf16: 1.3x torch
    bf16, max |diff| 0.003 from fp32, within the accuracy rule), else fp32; int8 and fp16 are not
    served by this backend (NNCF int8 measured no faster than fp32 on this model)."""
    if requested != "auto":
        return Choice(requested, "set explicitly")
    native = cpu.native_bf16
    if native:
        return Choice("bf16", f"auto: native bf16 on this CPU ({', '.join(sorted(native))})")
    return Choice("fp32", "auto: no native bf16 on this CPU (no amx_bf16 or avx512_bf16)")


def auto_candidates(
    model_dir: Path,
    precision: str,
    cpu: CpuInfo,
    *,
    onnx_installed: bool,
    openvino_installed: bool,
    torch_installed: bool = True,
) -> list[Candidate]:
    """The CPU backends `auto` may pick for this artifact, install and precision setting:
    torch where installed; ONNX Runtime where installed and the artifact has the graph of that
    precision; OpenVINO where installed, the artifact has the fp32 graph and the precision is
    fp32 or bf16 (bf16 only with native bf16: emulated, it is several times slower)."""
    candidates = []
    if torch_installed:
        candidates.append(Candidate("torch", choose_precision(precision, "cpu", cpu)))
    if onnx_installed:
        onnx = choose_onnx_precision(precision, (model_dir / ONNX_FILES["int8"]).is_file())
        graph = ONNX_FILES.get(onnx.value)
        if graph is not None and (model_dir / graph).is_file():
            candidates.append(Candidate("onnx", onnx))
    if openvino_installed and (model_dir / ONNX_FILES["fp32"]).is_file():
        openvino = choose_openvino_precision(precision, cpu)
        if openvino.value == "fp32" or (openvino.value == "bf16" and cpu.native_bf16):
            candidates.append(Candidate("openvino", openvino))
    return candidates


def no_candidate(model_dir: Path, precision: str) -> str:
    """Why `auto` finds no CPU backend for this artifact here (torch is not installed)."""
    graphs = [name for name in ONNX_FILES.values() if (model_dir / name).is_file()]
    if not graphs:
        return (
            f"{model_dir} has no ONNX graph ({', '.join(ONNX_FILES.values())}) and torch is not "
            "installed, so nothing here can serve it: export it with `moderation-train export "
            f"--onnx`, or serve it with torch ({INSTALL_TORCH})"
        )
    return (
        f"no installed backend serves {model_dir} at precision {precision} (its graphs: "
        f"{', '.join(graphs)}; torch is not installed): set MODERATION_PRECISION=auto, or "
        f"{INSTALL_TORCH}"
    )


def measured_runtime(runtime: Runtime, measured: Measured, *, remembered: bool) -> Runtime:
    """`runtime` with the measured choice in place of `auto`."""
    how = "remembered for this machine" if remembered else "measured at this start"
    chosen = next(c for c in runtime.candidates if c.backend == measured.backend)
    return Runtime(
        Choice(measured.backend, f"auto: fastest here, {how}: {measured.summary()}"),
        runtime.device,
        chosen.precision,
        runtime.threads,
        runtime.cpu,
        cache_key=runtime.cache_key,
        measured=measured,
    )


def choose_onnx_precision(requested: str, has_int8: bool) -> Choice[str]:
    if requested != "auto":
        return Choice(requested, "set explicitly")
    if has_int8:
        return Choice("int8", "auto: the artifact's int8 graph passed the accuracy rule at export")
    return Choice("fp32", f"auto: the artifact has no {ONNX_FILES['int8']}")


def choose_runtime(
    model_dir: Path,
    *,
    backend: str,
    device: str,
    precision: str,
    threads: int | str,
    artifact_version: str = "",
    cache_dir: Path | None = None,
    shapes: Sequence[tuple[int, int]] = (),
) -> Runtime:
    """Resolve `auto` settings for serving the artifact in `model_dir` on this machine;
    `ModelLoadError` for a setting no rule accepts. A CPU backend `auto` with several candidates
    is looked up in the cache under `cache_dir` (None: `default_cache_dir()`), keyed with
    `artifact_version` and the `shapes` that are timed; a miss leaves it pending."""
    try:
        runtime = _choose_runtime(
            model_dir, backend=backend, device=device, precision=precision, threads=threads
        )
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from None
    if not runtime.pending:
        return runtime
    names = [c.name for c in runtime.candidates]
    key = cache_key(
        runtime.cpu,
        runtime.threads.value,
        artifact_version,
        [f"{c.name} {library_version(c.backend)}" for c in runtime.candidates],
        shapes,
    )
    pending = Runtime(
        runtime.backend, runtime.device, runtime.precision, runtime.threads, runtime.cpu,
        candidates=runtime.candidates, cache_key=key,
    )  # fmt: skip
    remembered = read_choice(cache_dir or default_cache_dir(), key, names)
    if remembered is None:
        return pending
    return measured_runtime(pending, remembered, remembered=True)


def _choose_runtime(
    model_dir: Path, *, backend: str, device: str, precision: str, threads: int | str
) -> Runtime:
    cpu = read_cpu()
    if backend == "openvino" and device == AUTO:
        chosen_device = Choice("cpu", "auto: the openvino backend runs on a CPU")
    else:
        chosen_device = choose_device(
            device, NVIDIA_DRIVER.exists(), gpu_may_be_present=gpu_may_be_present()
        )
    chosen_threads = choose_threads(threads if threads else "auto", usable_cpus())
    has_torch = torch_installed()
    if backend == "torch" and not has_torch:
        raise ValueError(f"backend torch: torch is not installed: {INSTALL_TORCH}")
    if chosen_device.value.startswith("cuda") and not has_torch:
        if device != AUTO:
            raise ValueError(f"device {device!r} is served by torch, which is not installed: "
                             f"{INSTALL_TORCH}")  # fmt: skip
        chosen_device = Choice("cpu", "auto: an NVIDIA driver, but torch is not installed")
    if backend == AUTO and chosen_device.value == "cpu":
        candidates = auto_candidates(
            model_dir,
            precision,
            cpu,
            onnx_installed=onnxruntime_installed(),
            openvino_installed=openvino_installed(),
            torch_installed=has_torch,
        )
        if not candidates:
            raise ValueError(no_candidate(model_dir, precision))
        if len(candidates) == 1:
            why = "auto: the only CPU backend this artifact and install allow"
            return Runtime(
                Choice(candidates[0].backend, why),
                chosen_device,
                candidates[0].precision,
                chosen_threads,
                cpu,
            )
        listed = ", ".join(c.name for c in candidates)
        return Runtime(
            Choice(AUTO, f"not measured yet on this machine; timed at start: {listed}"),
            chosen_device,
            Choice(AUTO, "that of the backend the measurement picks"),
            chosen_threads,
            cpu,
            candidates=tuple(candidates),
        )
    chosen_backend = choose_backend(backend, chosen_device.value)
    if chosen_backend.value == "onnx":
        chosen_precision = choose_onnx_precision(
            precision, (model_dir / ONNX_FILES["int8"]).is_file()
        )
    elif chosen_backend.value == "openvino":
        check_openvino(model_dir, chosen_device.value)
        chosen_precision = choose_openvino_precision(precision, cpu)
        if chosen_precision.value not in OPENVINO_PRECISIONS:
            raise ValueError(
                f"the openvino backend serves precision {' or '.join(OPENVINO_PRECISIONS)}, "
                f"not {chosen_precision.value!r}"
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
    return Runtime(chosen_backend, chosen_device, chosen_precision, chosen_threads, cpu)
