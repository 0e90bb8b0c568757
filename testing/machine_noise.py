"""How noisy the machine was while a stage ran: CPU steal, load and other processes' CPU.

On a shared virtual machine the hypervisor can hand a large share of the CPU to other guests
(steal, the 8th field of /proc/stat's `cpu` line); a stage timed then runs slower for reasons
that are not the code's. `NoiseMeter` samples /proc/stat, /proc/loadavg and this process tree's
CPU time at the start and at the end of a stage:

    with NoiseMeter() as noise:
        run_the_stage()
    noise.figures  # {"seconds", "steal_pct", "busy_pct", "own_pct", "others_pct", ...}

Shares are of the whole machine's CPU time over the interval (all CPUs together): `busy_pct`
is every process's (not idle, not stolen), `own_pct` this process and its descendants (the
worker subprocesses, the broker), `others_pct` the rest. Where /proc is missing (not Linux) the
figures it would give are None and the load comes from `os.getloadavg` if there is one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from worker.backends.hardware import SPEED_FLAGS, cgroup_cpus, read_cpu, usable_cpus

# a stage run while the hypervisor took more than this share of the CPU is reported as noisy
NOISY_STEAL_PCT = 10.0

PROC = Path("/proc")


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU time so far, in clock ticks, all CPUs together (/proc/stat `cpu`)."""

    total: int  # user + nice + system + idle + iowait + irq + softirq + steal
    idle: int  # idle + iowait
    steal: int


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    cpu: CpuTimes | None
    load1: float | None
    own_ticks: int | None  # this process tree's CPU time (ticks)
    probe_ms: float | None = None  # `speed_probe_ms` at that moment


def parse_cpu_times(stat_text: str) -> CpuTimes | None:
    """The aggregate `cpu` line of /proc/stat; None if there is none. Guest time is already
    counted in user time, so it is left out of the total."""
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            values = [int(v) for v in fields[1:9]]
            values += [0] * (8 - len(values))  # old kernels: no steal field
            user, nice, system, idle, iowait, irq, softirq, steal = values
            return CpuTimes(
                total=user + nice + system + idle + iowait + irq + softirq + steal,
                idle=idle + iowait,
                steal=steal,
            )
    return None


def parse_load1(loadavg_text: str) -> float | None:
    """The 1-minute load average from /proc/loadavg's text."""
    try:
        return float(loadavg_text.split()[0])
    except (IndexError, ValueError):
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def read_cpu_times(proc: Path = PROC) -> CpuTimes | None:
    text = _read(proc / "stat")
    return parse_cpu_times(text) if text is not None else None


def read_load1(proc: Path = PROC) -> float | None:
    text = _read(proc / "loadavg")
    if text is not None:
        return parse_load1(text)
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def parse_pid_stat(text: str) -> tuple[int, int] | None:
    """(parent pid, utime + stime + cutime + cstime in ticks) from /proc/<pid>/stat."""
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[1]), sum(int(v) for v in fields[11:15])
    except (IndexError, ValueError):
        return None


def tree_ticks(root: int, proc: Path = PROC) -> int | None:
    """CPU ticks of `root`'s live descendants (not `root` itself), each with the time of the
    children it has reaped; None without /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    try:
        entries = [p for p in proc.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    for entry in entries:
        text = _read(entry / "stat")
        parsed = parse_pid_stat(text) if text else None
        if parsed is not None:
            parents[int(entry.name)], ticks[int(entry.name)] = parsed
    total = 0
    for pid in ticks:
        seen, ancestor = 0, parents.get(pid)
        while ancestor is not None and ancestor != root and seen < 64:
            ancestor, seen = parents.get(ancestor), seen + 1
        if ancestor == root:
            total += ticks[pid]
    return total


def own_ticks(proc: Path = PROC) -> int | None:
    """This process's CPU time, its reaped children's, and its live descendants', in ticks."""
    descendants = tree_ticks(os.getpid(), proc)
    if descendants is None:
        return None
    times = os.times()
    mine = times.user + times.system + times.children_user + times.children_system
    return descendants + round(mine * os.sysconf("SC_CLK_TCK"))


def snapshot(proc: Path = PROC) -> Snapshot:
    probe = speed_probe_ms()
    return Snapshot(
        time.monotonic(), read_cpu_times(proc), read_load1(proc), own_ticks(proc), probe
    )


# A fixed single-threaded loop, ~10 ms on the project's machines: `speed_probe_ms`.
SPEED_PROBE_LOOPS = 200_000


def speed_probe_ms(rounds: int = 3) -> float:
    """The best of `rounds` timings of a fixed single-threaded Python loop, in ms: how fast one
    CPU runs for us right now. A host can slow its guests down without any steal showing: on
    the 2-vCPU AMD EPYC of session 11 the same forward pass took 12.3 ms of thread CPU at one
    hour and 15.0 at the next, at 0.0 % steal (figures: docs/benchmarks.md)."""
    best = float("inf")
    for _ in range(rounds):
        started, total = time.perf_counter(), 0
        for i in range(SPEED_PROBE_LOOPS):
            total += i * i
        best = min(best, time.perf_counter() - started)
    return round(1000 * best, 2)


def _pct(part: int, whole: int) -> float:
    return round(100 * part / whole, 1)


def figures(start: Snapshot, end: Snapshot) -> dict[str, Any]:
    """What happened on the machine between two snapshots; shares in % of all CPU time."""
    result: dict[str, Any] = {
        "seconds": round(end.at - start.at, 2),
        "steal_pct": None,
        "busy_pct": None,
        "own_pct": None,
        "others_pct": None,
        "load1_start": start.load1,
        "load1_end": end.load1,
        "probe_ms_start": start.probe_ms,
        "probe_ms_end": end.probe_ms,
    }
    if start.cpu is None or end.cpu is None or end.cpu.total <= start.cpu.total:
        return result
    total = end.cpu.total - start.cpu.total
    steal = end.cpu.steal - start.cpu.steal
    busy = total - (end.cpu.idle - start.cpu.idle) - steal
    result |= {"steal_pct": _pct(steal, total), "busy_pct": _pct(busy, total)}
    if start.own_ticks is not None and end.own_ticks is not None:
        own = max(0, min(busy, end.own_ticks - start.own_ticks))
        result |= {"own_pct": _pct(own, total), "others_pct": _pct(busy - own, total)}
    return result


def is_noisy(noise: dict[str, Any] | None, threshold: float = NOISY_STEAL_PCT) -> bool:
    """A stage counts as noisy when the hypervisor took more than `threshold` % of the CPU."""
    steal = (noise or {}).get("steal_pct")
    return steal is not None and steal > threshold


def describe(noise: dict[str, Any] | None) -> str:
    """One short phrase for a report: "steal 35.0 % (NOISY), load 1.1→2.3, other processes 12 %"."""
    if not noise:
        return "noise not measured"
    parts = []
    steal = noise.get("steal_pct")
    if steal is None:
        parts.append("steal n/a")
    else:
        parts.append(f"steal {steal:.1f} %" + (" (NOISY)" if is_noisy(noise) else ""))
    start, end = noise.get("load1_start"), noise.get("load1_end")
    if start is not None and end is not None:
        parts.append(f"load {start:.2f}→{end:.2f}")
    if noise.get("others_pct") is not None:
        parts.append(f"other processes {noise['others_pct']:.0f} %")
    return ", ".join(parts)


def machine_description() -> dict[str, Any]:
    """The machine a report's figures came from: CPU model, the flags that decide speed, the
    CPUs this process may use and its cgroup's CPU quota."""
    cpu = read_cpu()
    quota = cgroup_cpus()
    return {
        "cpu": cpu.model,
        "cpu_flags": " ".join(sorted(cpu.flags & SPEED_FLAGS)) or "none of " + str(SPEED_FLAGS),
        "cores": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "cgroup_cpu_quota": quota if quota is not None else "none",
    }


def process_ticks(pid: int, proc: Path = PROC) -> int | None:
    """CPU ticks (user + system, every thread) of process `pid` itself; None if it is gone."""
    text = _read(proc / str(pid) / "stat")
    if text is None:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class CpuSample:
    """The machine's CPU time and some processes' (name -> ticks) at one moment."""

    at: float
    cpu: CpuTimes | None
    processes: dict[str, int | None]


def cpu_sample(pids: dict[str, int], proc: Path = PROC) -> CpuSample:
    return CpuSample(
        time.monotonic(),
        read_cpu_times(proc),
        {name: process_ticks(pid, proc) for name, pid in pids.items()},
    )


def cpu_split(start: CpuSample, end: CpuSample, ticks_per_s: int | None = None) -> dict[str, Any]:
    """Where the machine's CPU went between two samples, in CPUs (1.0: one CPU busy for the
    whole interval): each named process, `busy` in all, and `rest` (busy minus the named ones:
    on the bench's machine the broker, and any other process)."""
    seconds = end.at - start.at
    split: dict[str, Any] = {"seconds": round(seconds, 2)}
    if seconds <= 0:
        return split
    scale = 1 / ((ticks_per_s or os.sysconf("SC_CLK_TCK")) * seconds)
    deltas: dict[str, int | None] = {}
    for name, before in start.processes.items():
        after = end.processes.get(name)
        delta = None if before is None or after is None else after - before
        deltas[name] = delta
        split[name] = None if delta is None else round(delta * scale, 2)
    if start.cpu is not None and end.cpu is not None:
        busy = (end.cpu.total - start.cpu.total) - (end.cpu.idle - start.cpu.idle)
        busy -= end.cpu.steal - start.cpu.steal
        named = sum(d for d in deltas.values() if d is not None)
        split["busy"] = round(busy * scale, 2)
        split["rest"] = round(max(0, busy - named) * scale, 2)
    return split


class NoiseMeter:
    """A context manager around a stage; `figures` holds the machine's noise once it exits
    (also when the stage raised). Without `with`: `meter = NoiseMeter().begin()`, then
    `meter.end()` returns the figures."""

    def __init__(self, proc: Path = PROC) -> None:
        self.proc = proc
        self.start: Snapshot | None = None
        self.figures: dict[str, Any] = {}

    def begin(self) -> NoiseMeter:
        self.start = snapshot(self.proc)
        return self

    def end(self) -> dict[str, Any]:
        assert self.start is not None, "end() before begin()"
        self.figures = figures(self.start, snapshot(self.proc))
        self.figures["noisy"] = is_noisy(self.figures)
        return self.figures

    def __enter__(self) -> NoiseMeter:
        return self.begin()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()
