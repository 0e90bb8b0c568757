"""Sends the hostile HTTP catalog (`http_catalog.py`) to a worker's API over raw sockets, one
case at a time, while a thread polls /healthz; reports each outcome, the worst /healthz latency
and the worker's RSS before and after."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testing.http import http_get, metric_sample
from testing.ports import free_port
from testing.reliability.harness import rss_bytes
from testing.reliability.http_catalog import CANARY_TEXT, HttpCase, hostile_api_env, http_catalog
from testing.topics import fresh_topics
from testing.worker_process import QUICK_ENV, WorkerProcess, start_worker

MiB = 1_048_576
DEFAULT_MAX_CONNECTIONS = 512  # the default MODERATION_HTTP_API_MAX_CONNECTIONS


class HealthWatch(threading.Thread):
    """GET /healthz every `interval_s` until stopped; the slowest answer is `worst_s` (a poll
    that gets no answer counts as a failure, and its wait as its latency)."""

    def __init__(self, url: str, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url = url + "/healthz"
        self.interval_s = interval_s
        self.latencies: list[float] = []
        self.failures = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            started = time.monotonic()
            try:
                ok = http_get(self.url, timeout=60).status == 200
            except OSError:
                ok = False
            self.latencies.append(time.monotonic() - started)
            self.failures += 0 if ok else 1
            self._halt.wait(self.interval_s)

    def finish(self) -> None:
        self._halt.set()
        self.join(timeout=70)

    @property
    def worst_s(self) -> float:
        return max(self.latencies, default=0.0)


def _status(head: bytes) -> str:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    return parts[1].decode("ascii", "replace") if len(parts) > 1 else "garbled"


def read_answer(sock: socket.socket, deadline: float, wait_close: bool) -> str:
    """The answer's status code (with " closed"/" open" when `wait_close`), "closed" when the
    server closes without answering, "no answer" when nothing comes before `deadline`."""
    data = b""
    status = None
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            chunk = None
        except ConnectionResetError:
            chunk = b""
        if chunk is None:  # the deadline passed
            if status is None:
                return "no answer"
            return f"{status} open" if wait_close else status
        if not chunk:  # the server closed the connection
            if status is None:
                return "closed" if not data else _status(data)
            return f"{status} closed" if wait_close else status
        data += chunk
        if status is None and b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            status = _status(head)
            length = next(
                (
                    int(line.split(b":", 1)[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                ),
                0,
            )
            data = body
            if not wait_close and len(data) >= length:
                return status
        elif status is not None and not wait_close:
            return status


def raw_request(
    port: int, request: bytes, wait_s: float = 10.0
) -> tuple[str, dict[str, str], bytes]:
    """One request on a fresh connection: the status, the headers (names lower case) and the
    body of the answer (read until the server closes or `wait_s` passes)."""
    data = b""
    with _connect(port, request) as sock:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            headers = _headers(head)
            if body and len(body) >= int(headers.get("content-length", "-1")):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    return _status(head), _headers(head), body


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def _connect(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    if request:
        with contextlib.suppress(OSError):
            sock.sendall(request)
    return sock


def exchange(port: int, case: HttpCase, worker: WorkerProcess | None = None) -> str:
    """Send one case on a fresh connection (after opening `case.hold` others, and with `worker`
    waiting until it counts them open) and read what comes back; a hang-up case returns
    "hung up" (its fate is read from the metrics)."""
    held = [_connect(port, case.hold_request) for _ in range(case.hold)]
    try:
        if case.hold and worker is not None:
            cap = int(worker.env.get("MODERATION_HTTP_API_MAX_CONNECTIONS", case.hold))
            wait_connections_at_least(worker, min(case.hold, cap))  # beyond the cap: refused
        elif case.hold:
            time.sleep(0.2)  # the server has accepted them all
        with _connect(port, case.request) as sock:
            if case.hangup:
                time.sleep(case.hangup_after_s)
                return "hung up"
            deadline = time.monotonic() + case.wait_s
            return read_answer(sock, deadline, wait_close=case.expected.endswith("closed"))
    finally:
        for sock in held:
            sock.close()


def wait_connections_at_least(worker: WorkerProcess, bound: int, timeout: float = 20.0) -> None:
    """Until the worker counts `bound` API connections open (a loaded machine accepts the held
    connections of a case later than a quiet one)."""
    deadline = time.monotonic() + timeout
    while metric_sample(worker.get("/metrics").body, "moderation_http_open_connections") < bound:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker counts fewer than {bound} connections open")
        time.sleep(0.05)


def wait_connections_below(worker: WorkerProcess, bound: int, timeout: float = 10.0) -> None:
    """Until the worker has fewer than `bound` API connections open (it sees the ones a case
    held close a moment after they did)."""
    deadline = time.monotonic() + timeout
    while metric_sample(worker.get("/metrics").body, "moderation_http_open_connections") >= bound:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the worker still has {bound} or more connections open")
        time.sleep(0.05)


def _counted(worker: WorkerProcess) -> tuple[float, float]:
    body = worker.get("/metrics").body
    return (
        metric_sample(body, "moderation_http_client_disconnects_total"),
        metric_sample(body, "moderation_errors_total", kind="http"),
    )


def hangup_fate(worker: WorkerProcess, before: tuple[float, float], wait_s: float) -> str:
    """What the worker made of a client hanging up: "disconnect", "error" or "not counted"."""
    deadline = time.monotonic() + wait_s
    while True:
        disconnects, errors = _counted(worker)
        if errors > before[1]:
            return "error"
        if disconnects > before[0]:
            return "disconnect"
        if time.monotonic() > deadline:
            return "not counted"
        time.sleep(0.05)


@dataclass
class CatalogRun:
    outcomes: dict[str, str] = field(default_factory=dict)
    unexpected: dict[str, tuple[str, str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    healthz_worst_s: float = 0.0
    healthz_polls: int = 0
    healthz_failures: int = 0
    rss_before_mib: float = 0.0
    rss_after_mib: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "cases": len(self.outcomes),
            "as_expected": len(self.outcomes) - len(self.unexpected),
            "unexpected": {k: {"expected": e, "got": g} for k, (e, g) in self.unexpected.items()},
            "outcomes": self.outcomes,
            "healthz_worst_s": round(self.healthz_worst_s, 3),
            "healthz_polls": self.healthz_polls,
            "healthz_failures": self.healthz_failures,
            "rss_before_mib": round(self.rss_before_mib, 1),
            "rss_after_mib": round(self.rss_after_mib, 1),
            "slowest_case": max(self.seconds, key=self.seconds.__getitem__, default=None),
        }


def run_catalog(worker: WorkerProcess, cases: list[HttpCase]) -> CatalogRun:
    """Every case in order against `worker` (its API port), /healthz watched throughout."""
    port = int(worker.env["MODERATION_HTTP_API_PORT"])
    run = CatalogRun(rss_before_mib=(rss_bytes(worker.pid) or 0) / MiB)
    watch = HealthWatch(worker.url)
    watch.start()
    try:
        for case in cases:
            started = time.monotonic()
            before = _counted(worker) if case.hangup else (0.0, 0.0)
            got = exchange(port, case, worker)
            if case.hold:
                wait_connections_below(worker, case.hold // 2)
            if case.hangup:
                got = hangup_fate(worker, before, case.wait_s)
            run.seconds[case.name] = round(time.monotonic() - started, 3)
            run.outcomes[case.name] = got
            if got != case.expected:
                run.unexpected[case.name] = (case.expected, got)
    finally:
        watch.finish()
    run.rss_after_mib = (rss_bytes(worker.pid) or 0) / MiB
    run.healthz_worst_s = watch.worst_s
    run.healthz_polls = len(watch.latencies)
    run.healthz_failures = watch.failures
    return run


def hostile_http(
    bootstrap: str, workdir: Path, model: str | None, env: dict[str, str], full: bool = True
) -> dict[str, Any]:
    """`make reliability`'s scenario: the catalog (in full: the spans request three times in a
    row, 656 stalled bodies against the default cap of 512) against one worker with the API on.
    Raises AssertionError when a case got another outcome, /healthz was slow or failed, the
    RSS grew by 150 MiB or more, or the worker did not exit 0."""
    key = f"canarykey{uuid.uuid4().hex[:16]}"
    overrides = QUICK_ENV | env | {"MODERATION_HTTP_API_PORT": str(free_port())}
    overrides |= hostile_api_env(key, DEFAULT_MAX_CONNECTIONS)
    if model is not None:
        overrides["MODERATION_MODEL"] = model
    topics = fresh_topics(bootstrap, "http-hostile")
    worker = start_worker(bootstrap, topics, log_path=workdir / "worker.log", overrides=overrides)
    try:
        run = run_catalog(worker, http_catalog(key, DEFAULT_MAX_CONNECTIONS, full=full))
    finally:
        code = worker.stop()
    log = worker.log()
    figures = {"scenario": "hostile http"} | run.figures() | {"exit_code": code}
    figures["secrets_in_log"] = key in log or CANARY_TEXT in log
    assert run.unexpected == {}, figures
    assert run.healthz_worst_s < 2.0 and run.healthz_failures == 0, figures
    assert run.rss_after_mib - run.rss_before_mib < 150, figures
    assert code == 0 and not figures["secrets_in_log"], figures
    return figures
