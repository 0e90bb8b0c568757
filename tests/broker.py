"""The real Kafka-compatible broker the tests run against (lives in `worker.bench.broker`, which
the benchmark shares): `KAFKA_BOOTSTRAP_SERVERS` if set; testcontainers' Kafka when a Docker
engine answers; else tansu on a free loopback port with in-memory storage.
"""

from worker.bench.broker import (
    docker_available,
    free_port,
    kafka_broker,
    tansu_broker,
    wait_for_port,
)

__all__ = ["docker_available", "free_port", "kafka_broker", "tansu_broker", "wait_for_port"]
