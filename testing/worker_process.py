"""The worker as a child process: `python -m worker run` with an environment, ready when /readyz
answers 200, stopped with SIGTERM, its output collected in a log file.

The one launcher the tests (fixture `worker_process`), the benchmark, the demo and the
reliability supervisor (`testing.reliability.harness.WorkerSupervisor`) share.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from testing.http import HttpResult, http_get, metric_values
from testing.ports import free_port
from testing.topics import Topics
from testing.wait import wait_until

REPO_ROOT = Path(__file__).resolve().parents[1]

# What the tests and reliability runs start a worker with: CPU, one torch thread, commits every
# 200 ms, a 6 s session so that a killed worker's partitions move on quickly.
QUICK_ENV = {
    "MODERATION_DEVICE": "cpu",
    "MODERATION_COMMIT_INTERVAL_MS": "200",
    "MODERATION_SESSION_TIMEOUT_MS": "6000",
    "MODERATION_INFERENCE_THREADS": "1",
    "MODERATION_PRECISION": "fp32",  # scores compared with fp32 ones at 1e-5
}


def worker_env(
    bootstrap: str,
    topics: Topics,
    port: int,
    overrides: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """`base` (default: this process's environment), then the broker, the topics, the metrics
    port on 127.0.0.1 and HF_HUB_OFFLINE=1, then `overrides`."""
    env = dict(os.environ if base is None else base)
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MODERATION_INPUT_TOPIC": topics.input,
        "MODERATION_OUTPUT_TOPIC": topics.output,
        "MODERATION_DLQ_TOPIC": topics.dlq,
        "MODERATION_GROUP_ID": topics.group,
        "MODERATION_METRICS_HOST": "127.0.0.1",
        "MODERATION_METRICS_PORT": str(port),
        "MODERATION_HTTP_API_HOST": "127.0.0.1",  # used only where MODERATION_HTTP_API_PORT is set
        "HF_HUB_OFFLINE": "1",
    }
    return env | dict(overrides or {})


class WorkerProcess:
    """`python -m worker run [args]` started with `env` (its metrics port:
    MODERATION_METRICS_PORT); stdout and stderr go to `log_path` (None: this process's own)."""

    def __init__(
        self, env: Mapping[str, str], log_path: Path | None = None, args: Sequence[str] = ()
    ) -> None:
        self.env = dict(env)
        self.port = int(self.env["MODERATION_METRICS_PORT"])
        self.log_path = log_path
        command = [sys.executable, "-m", "worker", "run", *args]
        if log_path is None:
            self.proc = subprocess.Popen(command, env=self.env, cwd=REPO_ROOT)
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT
                )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        """Base URL of its Perspective-compatible HTTP API (MODERATION_HTTP_API_PORT)."""
        return f"http://127.0.0.1:{self.env['MODERATION_HTTP_API_PORT']}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def get(self, path: str, timeout: float = 5.0) -> HttpResult:
        """GET on the worker's HTTP port (OSError when nothing answers)."""
        return http_get(self.url + path, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        """/metrics as `testing.http.metric_values` reads it."""
        return metric_values(self.get("/metrics", timeout=2).body)

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /readyz answers 200. RuntimeError (with the log's tail) if the process
        exits first, TimeoutError after `timeout` seconds."""
        started = time.monotonic()
        wait_until(self._ready, timeout, message=lambda: f"worker not ready:\n{self.log()[-3000:]}")
        return time.monotonic() - started

    def _ready(self) -> bool:
        """Whether /readyz answers 200 now; RuntimeError once the process has exited."""
        if not self.alive():
            tail = self.log()[-3000:]
            raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{tail}")
        try:
            return self.get("/readyz", timeout=1).status == 200
        except OSError:
            return False

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the exit code (subprocess.TimeoutExpired after `timeout`)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM; SIGKILL if it has not exited after `timeout` seconds. The exit code."""
        try:
            return self.terminate(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL (if still running) and the exit code."""
        if self.alive():
            self.proc.kill()
        return self.proc.wait(timeout=30)


def start_worker(
    bootstrap: str,
    topics: Topics,
    *,
    log_path: Path | None = None,
    overrides: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
    wait: bool = True,
    ready_timeout: float = 120,
) -> WorkerProcess:
    """A worker on a free metrics port with `worker_env(...)`; waits until it is ready unless
    `wait` is false (stopped with SIGKILL if it never gets ready)."""
    worker = WorkerProcess(worker_env(bootstrap, topics, free_port(), overrides, base), log_path)
    if wait:
        try:
            worker.wait_ready(ready_timeout)
        except BaseException:
            worker.kill()
            raise
    return worker


# The `worker_process` fixture's type: start(topics, model=None, extra_env=None, wait=True).
WorkerFactory = Callable[..., WorkerProcess]


def refusal_line(overrides: dict[str, str]) -> str:
    """Run `python -m worker run` with QUICK_ENV and `overrides`, against a broker address
    nothing listens on: it must refuse before connecting. Asserts exit 2 and returns its one
    `moderation-worker:` line."""
    env = worker_env("127.0.0.1:9", Topics.fresh("refuse"), 0, QUICK_ENV | overrides)
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    [line] = [x for x in result.stderr.splitlines() if x.startswith("moderation-worker:")]
    return line
