"""The lag in seconds, measured by the real worker (in process) against the real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from testing.in_process import settings_for
from testing.kafka import comment, produce, read_all
from testing.topics import Topics
from testing.wait import wait_until_async
from worker.app import Worker
from worker.backends.backend import Backend, TokenBatch
from worker.backends.model import load_served_model

pytestmark = pytest.mark.integration

AGE_S = 600


class GatedBackend(Backend):
    """The real backend, except that every forward pass waits until `gate` is set."""

    def __init__(self, real: Backend) -> None:
        self.real = real
        self.gate = threading.Event()
        self.kind, self.device, self.precision = real.kind, real.device, real.precision
        self.labels = real.labels

    def warm_up(self, shapes: object) -> None:
        self.real.warm_up(shapes)  # type: ignore[arg-type]

    def infer(self, batch: TokenBatch) -> np.ndarray:
        if not self.gate.wait(60):
            raise RuntimeError("gate never opened")
        return self.real.infer(batch)


def gauges(worker: Worker) -> tuple[dict[str, float], dict[str, float]]:
    """(messages, seconds) of lag by partition, as the worker exports them."""
    result: tuple[dict[str, float], dict[str, float]] = ({}, {})
    for values, gauge in zip(result, (worker.metrics.lag, worker.metrics.lag_seconds), strict=True):
        for metric in gauge.collect():
            for sample in metric.samples:
                values[sample.labels["partition"]] = sample.value
    return result


async def test_lag_in_seconds_is_the_age_of_the_oldest_uncommitted_record(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    real = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    backend = GatedBackend(real.backend)
    old = int(time.time() * 1000) - AGE_S * 1000
    texts = [comment(f"m{i}", f"an old comment {i}") for i in range(6)]
    await produce(kafka_bootstrap, topics.input, texts, timestamp_ms=old)
    settings = settings_for(kafka_bootstrap, topics, commit_interval_ms=100)
    worker = Worker(settings, dataclasses.replace(real, backend=backend))
    running = asyncio.create_task(worker.run())
    try:
        # Consumed, stuck in the backend, not committed: behind by their age, in every
        # partition that holds some of them; offsets count them although they were consumed.
        await wait_until_async(
            lambda: (
                sum(gauges(worker)[0].values()) == len(texts)
                and max(gauges(worker)[1].values(), default=0) >= AGE_S
            ),
            30,
            message="the lag of the records in flight never showed",
        )
        messages, seconds = gauges(worker)
        for partition, behind in messages.items():
            if behind:
                assert AGE_S <= seconds[partition] < AGE_S + 60
            else:
                assert seconds[partition] == 0
        backend.gate.set()
        await read_all(kafka_bootstrap, topics.output, len(texts))
        # Scored and committed: caught up, 0 in both.
        await wait_until_async(
            lambda: (
                set(gauges(worker)[0].values()) == {0} and set(gauges(worker)[1].values()) == {0}
            ),
            30,
            message="the lag never dropped to 0 once committed",
        )
        assert len(gauges(worker)[1]) == 3  # every assigned partition is exported
    finally:
        backend.gate.set()
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
