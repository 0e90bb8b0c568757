"""Hostile policy files: what a policy path may be pointed at, and what the worker must do.

Each case makes one target in a directory; the probe points the worker's policy file (a symlink,
as a Kubernetes ConfigMap mounts it) at it and waits for the one expected outcome:

- `REJECTED`: `moderation_policy_reload_failures_total` +1, one "policy reload rejected" log
  line, the previous policy still in force (`moderation_policy_info`);
- `APPLIED`: the case's version in force (the watcher outlived every rejected case before it).

Throughout, /healthz is asked every 20 ms (its worst latency is reported: nothing the file
holds may stall the event loop) and the worker's RSS is read before and after. No log line may
quote a canary the files hold (a policy path pointed at a secret must not log a line of it).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testing.http import http_get, metric_sample
from testing.reliability.harness import rss_bytes
from testing.topics import Topics
from testing.worker_process import QUICK_ENV, start_worker

REJECTED = "rejected"
APPLIED = "applied"
CANARY = "CANARY-policy-secret-4f1d"
MiB = 1_048_576


def _tenants(count: int, version: str) -> bytes:
    """A valid policy listing `count` tenants (about 47 bytes of YAML each)."""
    lines = [f"version: {version}\n", "tenants:\n"]
    lines += [f"  tenant-{i:07d}:\n    thresholds: {{toxic: 0.5}}\n" for i in range(count)]
    return "".join(lines).encode()


def _write(content: bytes) -> Callable[[Path], Path]:
    def make(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"target-{time.monotonic_ns()}.yaml"
        path.write_bytes(content)
        return path

    return make


def _fifo(directory: Path) -> Path:
    path = directory / f"fifo-{time.monotonic_ns()}"
    os.mkfifo(path)
    return path


@dataclass(frozen=True)
class PolicyCase:
    name: str
    make: Callable[[Path], Path]  # creates the target in the directory, returns its path
    expected: str  # REJECTED or APPLIED
    version: str | None = None  # the version an APPLIED case puts in force
    full_only: bool = False  # slow: `make reliability` only, not `make test`


def policy_catalog(full: bool = True) -> list[PolicyCase]:
    """The cases in the order they are probed (the valid ones last: the watcher must be alive
    after every rejected one)."""
    cases = [
        PolicyCase("fifo-symlink", _fifo, REJECTED),  # on the loop: hangs until a writer comes
        PolicyCase("dev-zero-symlink", lambda _: Path("/dev/zero"), REJECTED),  # reads forever
        PolicyCase("directory", lambda d: d, REJECTED),
        PolicyCase("huge-2.5mb-tenant-list", _write(_tenants(53_000, "huge")), REJECTED),
        PolicyCase("deep-nesting", _write(b"version: " + b"[" * 20_000 + b"]" * 20_000), REJECTED),
        PolicyCase("int-abc", _write(b"version: !!int abc\n"), REJECTED),  # ValueError
        PolicyCase("bad-yaml", _write(b"version: [unclosed\n  x: 1\n"), REJECTED),
        PolicyCase(
            "secret-looking-line",
            _write(f"api_key: {CANARY}\n  password: {CANARY}\n".encode()),
            REJECTED,
        ),
        PolicyCase("unknown-label", _write(b"version: x\nthresholds: {toxicity: 0.5}\n"), REJECTED),
        PolicyCase(
            "large-valid-under-cap",
            _write(_tenants(20_000, "large")),
            APPLIED,
            version="large",
            full_only=True,
        ),
        PolicyCase("valid-after", _write(b"version: after\n"), APPLIED, version="after"),
    ]
    return [case for case in cases if full or not case.full_only]


@dataclass
class HealthPinger:
    """Asks /healthz every `interval_s` on a thread; keeps the worst latency and failures."""

    url: str
    interval_s: float = 0.02
    timeout_s: float = 10.0
    worst_s: float = 0.0
    requests: int = 0
    failures: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> HealthPinger:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = http_get(self.url, timeout=self.timeout_s).status == 200
            except OSError:
                ok = False
            self.worst_s = max(self.worst_s, time.monotonic() - started)
            self.requests += 1
            self.failures += not ok
            self._stop.wait(self.interval_s)


def _metrics(worker_url: str) -> str:
    """/metrics, or "" when the worker does not answer in time (a stalled loop)."""
    try:
        return http_get(worker_url + "/metrics", timeout=5).body
    except OSError:
        return ""


def probe_policy_files(
    bootstrap: str,
    topics: Topics,
    workdir: Path,
    *,
    model: str | None = None,
    full: bool = True,
    case_timeout_s: float = 60.0,
) -> dict:
    """Every case of `policy_catalog(full)` against one real worker hot-reloading its policy
    file; returns the figures (outcome per case, worst /healthz latency, RSS before/after, the
    worker's exit code). Asserts nothing: the caller compares `outcomes` with `expected`."""
    targets = workdir / "targets"
    targets.mkdir(parents=True, exist_ok=True)
    first = _write(b"version: v0\n")(targets)
    policy = workdir / "policy.yaml"
    policy.symlink_to(first)
    overrides = QUICK_ENV | {
        "MODERATION_POLICY_FILE": str(policy),
        "MODERATION_POLICY_POLL_INTERVAL_S": "0.1",
    }
    if model is not None:
        overrides["MODERATION_MODEL"] = model
    worker = start_worker(bootstrap, topics, log_path=workdir / "worker.log", overrides=overrides)
    cases = policy_catalog(full)
    figures: dict = {
        "scenario": "hostile policy files",
        "cases": len(cases),
        "expected": {case.name: case.expected for case in cases},
        "outcomes": {},
        "seconds": {},
    }
    try:
        figures["rss_before_mib"] = round((rss_bytes(worker.pid) or 0) / MiB, 1)
        version = "v0"
        with HealthPinger(worker.url + "/healthz") as pinger:
            for case in cases:
                started = time.monotonic()
                failures = metric_sample(
                    _metrics(worker.url), "moderation_policy_reload_failures_total"
                )
                swap = workdir / "swap"
                swap.symlink_to(case.make(targets))
                os.replace(swap, policy)  # what the kubelet does to ..data
                outcome = "timeout"
                while time.monotonic() - started < case_timeout_s and worker.alive():
                    body = _metrics(worker.url)
                    now = metric_sample(body, "moderation_policy_reload_failures_total")
                    if now > failures:
                        kept = metric_sample(body, "moderation_policy_info", version=version)
                        outcome = REJECTED if now == failures + 1 and kept == 1 else "broken"
                        break
                    if case.version and metric_sample(
                        body, "moderation_policy_info", version=case.version
                    ):
                        outcome, version = APPLIED, case.version
                        break
                    time.sleep(0.05)
                figures["outcomes"][case.name] = outcome
                figures["seconds"][case.name] = round(time.monotonic() - started, 2)
                if outcome == "timeout":
                    break  # a stalled worker (a FIFO, /dev/zero) would stall every later case
        figures["healthz_worst_ms"] = round(pinger.worst_s * 1000, 1)
        figures["healthz_requests"] = pinger.requests
        figures["healthz_failures"] = pinger.failures
        figures["rss_after_mib"] = round((rss_bytes(worker.pid) or 0) / MiB, 1)
    finally:
        figures["exit_code"] = worker.stop(timeout=30)
    log = worker.log()
    figures["rejected_log_lines"] = log.count("policy reload rejected")
    figures["canary_in_log"] = CANARY in log
    figures["tracebacks_in_log"] = log.count("Traceback")
    return figures
