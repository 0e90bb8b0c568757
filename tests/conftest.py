"""Shared fixtures: a real broker, unique topics per test, a tiny random model, worker processes.

Only fixtures live here; what they call is in `testing/` (tests import from there, never from
this file).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from testing.broker import kafka_broker
from testing.models import build_tiny_model
from testing.topics import Topics
from testing.worker_process import QUICK_ENV, WorkerFactory, WorkerProcess, start_worker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with kafka_broker(tmp_path_factory.mktemp("broker") / "broker.log") as bootstrap:
        yield bootstrap


@pytest.fixture
def topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Topics:
    """Fresh input (3 partitions), output and dead-letter topics, and a fresh group id."""
    names = Topics.fresh(request.node.name[:40].replace("[", "-").replace("]", ""))
    asyncio.run(names.create(kafka_bootstrap))
    return names


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_shadow_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny model (seed 1: other weights, version `seed-1`), to attach as a shadow."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-shadow-model"), seed=1)


@pytest.fixture
def worker_process(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[WorkerFactory]:
    """`start(topics, model=None, extra_env=None, wait=True)`: a `python -m worker run`
    subprocess (`testing.worker_process.WorkerProcess`) with the tiny model on CPU; each is
    killed at teardown if still running."""
    started: list[WorkerProcess] = []

    def start(
        topics: Topics,
        model: Path | str | None = None,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> WorkerProcess:
        overrides = QUICK_ENV | {"MODERATION_MODEL": str(model or tiny_model_dir)}
        worker = start_worker(
            kafka_bootstrap, topics, log_path=tmp_path / f"worker-{len(started)}.log",
            overrides=overrides | (extra_env or {}), wait=False,
        )  # fmt: skip
        started.append(worker)
        if wait:
            worker.wait_ready(90)
        return worker

    yield start
    for worker in started:
        worker.kill()
