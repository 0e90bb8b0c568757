"""Settings chosen from the machine the worker runs on, each with the reason it was chosen.

The rules are pure functions of their inputs (`choose_precision`, `choose_threads`,
`cpu_quota`, `parse_cpuinfo`), so they can be tested with synthetic CPUs and cgroup files; the
`read_*` / `usable_cpus` helpers are the thin layer that reads the real machine. Nothing here
imports torch: callers pass in what only torch knows (for example whether CUDA supports bf16).

The rules, in one place:

* precision "auto": CUDA -> bf16 where the GPU supports it, else fp16. CPU -> bf16 only where
  the CPU computes it natively (AMX-BF16 or AVX512-BF16 in the flags), else fp32. int8 is never
  chosen automatically (it changes the scores; it has to be asked for).
* threads "auto": with 2 or more usable CPUs, all but one (that one is left for the event loop
  and the tokenizer thread); with fewer, one. "Usable" is the smaller of the CPUs this process
  may run on and the cgroup CPU quota. On 2 cores, 2 threads measured a faster model alone but a
  slower worker end to end than 1 (docs/benchmarks.md).
"""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# the flags that decide speed here, reported beside every figure
SPEED_FLAGS = frozenset(
    {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", *NATIVE_BF16_FLAGS}
)
RESERVED_CPUS = 1  # left to the event loop and the tokenizer thread when there are >= 2
RESERVE_FROM = 2

CPUINFO = Path("/proc/cpuinfo")
CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True, slots=True)
class Choice(Generic[T]):
    """A chosen setting and why, for `moderation-worker info` and the start-up log."""

    value: T
    reason: str

    def __str__(self) -> str:
        return f"{self.value} ({self.reason})"


@dataclass(frozen=True, slots=True)
class CpuInfo:
    model: str
    flags: frozenset[str]

    @property
    def native_bf16(self) -> frozenset[str]:
        """The flags that give this CPU native bf16 arithmetic (empty if none)."""
        return self.flags & NATIVE_BF16_FLAGS


# --- pure rules -------------------------------------------------------------------------------


def parse_cpuinfo(text: str) -> CpuInfo:
    """The first processor's model name and feature flags from `/proc/cpuinfo` text.

    x86 writes `model name` and `flags`; arm64 writes `Features` (and often no model name)."""
    model = ""
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        if model and flags:
            break
    return CpuInfo(model=model, flags=flags)


def cpu_quota(cpu_max_text: str) -> float | None:
    """CPUs allowed by a cgroup v2 `cpu.max` ("QUOTA PERIOD"): None when unlimited or unreadable.

    >>> cpu_quota("150000 100000")
    1.5
    """
    parts = cpu_max_text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return _ratio(parts[0], parts[1])


def cfs_quota(quota_us_text: str, period_us_text: str) -> float | None:
    """CPUs allowed by cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1 = unlimited)."""
    return _ratio(quota_us_text.strip(), period_us_text.strip())


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return q / p


def choose_precision(
    requested: str, device_type: str, cpu: CpuInfo, *, cuda_bf16: bool = False
) -> Choice[str]:
    """The numeric precision to serve in. `device_type` is "cpu" or "cuda" ("cuda:1" is fine);
    `cuda_bf16` says whether the GPU supports bf16 (the caller asks torch)."""
    requested = requested.strip().lower()
    device = device_type.split(":", 1)[0].strip().lower()
    if requested in PRECISIONS:
        if device == "cpu" and requested == "bf16" and not cpu.native_bf16:
            return Choice("bf16", "set explicitly; this CPU has no native bf16, so it is emulated")
        if device == "cpu" and requested == "fp16":
            return Choice("fp16", "set explicitly; CPUs rarely compute fp16 natively")
        return Choice(requested, "set explicitly")
    if requested != "auto":
        raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}: {requested!r}")
    if device == "cuda":
        if cuda_bf16:
            return Choice("bf16", "auto: the GPU supports bf16")
        return Choice("fp16", "auto: the GPU has no bf16 support")
    if device != "cpu":
        return Choice("fp32", f"auto: no precision rule for device {device_type!r}")
    native = cpu.native_bf16
    if native:
        return Choice("bf16", f"auto: native bf16 on this CPU ({', '.join(sorted(native))})")
    return Choice("fp32", "auto: no native bf16 on this CPU (no amx_bf16 or avx512_bf16)")


def choose_threads(requested: int | str, usable: float) -> Choice[int]:
    """Intra-op threads for inference, from the usable CPU count (`usable_cpus()`)."""
    if isinstance(requested, str):
        text = requested.strip().lower()
        if text != "auto":
            try:
                requested = int(text)
            except ValueError:
                raise ValueError(f"threads must be auto or a positive integer: {text!r}") from None
    if isinstance(requested, int):
        if requested < 1:
            raise ValueError(f"threads must be auto or a positive integer: {requested}")
        return Choice(requested, "set explicitly")
    whole = max(1, math.floor(usable))
    shown = f"{usable:g} usable CPU{'s' if usable != 1 else ''}"
    if usable >= RESERVE_FROM:
        return Choice(
            whole - RESERVED_CPUS,
            f"auto: {shown}, one left for the event loop and the tokenizer thread",
        )
    return Choice(whole, f"auto: {shown}, too few to leave one free")


# --- readers of the real machine --------------------------------------------------------------


def read_cpu(path: Path = CPUINFO) -> CpuInfo:
    """This machine's CPU model and flags (`platform.processor()` where /proc is absent)."""
    try:
        info = parse_cpuinfo(path.read_text(errors="replace"))
    except OSError:
        info = CpuInfo(model="", flags=frozenset())
    if not info.model:
        info = CpuInfo(
            model=platform.processor() or platform.machine() or "unknown", flags=info.flags
        )
    return info


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The CPU quota of this process's cgroup (v2, else v1), None when there is none."""
    text = _read(root / "cpu.max")
    if text is not None:
        return cpu_quota(text)
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = (
            _read(root / sub / "cpu.cfs_quota_us"),
            _read(root / sub / "cpu.cfs_period_us"),
        )
        if quota is not None and period is not None:
            return cfs_quota(quota, period)
    return None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_cpus(root: Path = CGROUP) -> float:
    """min(CPUs in the affinity mask, cgroup quota): what the worker can actually keep busy."""
    cpus = float(affinity_cpus())
    quota = cgroup_cpus(root)
    return min(cpus, quota) if quota is not None else cpus
