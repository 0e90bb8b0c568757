"""The intake is bounded in bytes as well as records: with the backend held, a worker fetches
until the records in flight reach `MODERATION_MAX_IN_FLIGHT_BYTES` (one fetch past it at most),
pauses, and once released scores everything; metadata over `MODERATION_MAX_METADATA_BYTES` is
dead-lettered with its reason."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from schemas import DeadLetterHeaders, ErrorKind
from testing.in_process import settings_for
from testing.kafka import produce, read_all
from testing.topics import Topics
from worker.app import Worker
from worker.backends.backend import Backend, TokenBatch
from worker.backends.model import load_served_model

pytestmark = pytest.mark.integration

RECORDS = 40
TEXT = "a long comment " * 3000  # 45,000 bytes: well under the 64 KiB text limit
LIMIT = 262_144  # MODERATION_MAX_IN_FLIGHT_BYTES of the test: about 5 such records
POLL = 2  # records per fetch: how far one fetch can pass the bound


class Held(Backend):
    """The real backend, held on an event until the test lets it go."""

    def __init__(self, real: Backend) -> None:
        self.real = real
        self.kind, self.device, self.precision = real.kind, real.device, real.precision
        self.labels = real.labels
        self.go = threading.Event()

    def warm_up(self, shapes: object) -> None:
        self.real.warm_up(shapes)  # type: ignore[arg-type]

    def infer(self, batch: TokenBatch) -> np.ndarray:
        if not self.go.wait(60):
            raise RuntimeError("never released")
        return self.real.infer(batch)


async def test_the_intake_pauses_at_the_byte_bound_and_loses_nothing(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    real = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    held = Held(real.backend)
    model = dataclasses.replace(real, backend=held)
    records = [
        (f"b{i}".encode(), orjson.dumps({"id": f"b{i}", "text": TEXT}), []) for i in range(RECORDS)
    ]
    size = max(len(key) + len(value) for key, value, _ in records)
    records.append(
        (b"meta", orjson.dumps({"id": "meta", "text": "t", "metadata": {"k": "m" * 70_000}}), [])
    )
    await produce(kafka_bootstrap, topics.input, records)
    settings = settings_for(
        kafka_bootstrap, topics, max_in_flight_bytes=LIMIT, max_poll_records=POLL,
        max_batch_size=POLL, max_in_flight=2048,
    )  # fmt: skip
    worker = Worker(settings, model)
    running = asyncio.create_task(worker.run())
    try:
        deadline = time.monotonic() + 60
        while worker.metrics.paused._value.get() != 1:
            assert time.monotonic() < deadline, "the intake never paused"
            assert worker.intake.checkpoint.in_flight_bytes() <= LIMIT + POLL * size
            await asyncio.sleep(0.01)
        worst = 0
        for _ in range(100):  # paused: no fetch adds to what is in flight
            worst = max(worst, worker.intake.checkpoint.in_flight_bytes())
            await asyncio.sleep(0.01)
        assert LIMIT <= worst <= LIMIT + POLL * size, worst
        assert worker.intake.checkpoint.in_flight() < RECORDS // 2
        assert worker.metrics.in_flight_bytes._value.get() == worst
        held.go.set()
        outputs = await read_all(kafka_bootstrap, topics.output, RECORDS, settle=0.5)
        assert sorted(r.key for r in outputs) == sorted(k for k, _, _ in records[:-1])
        [dead] = await read_all(kafka_bootstrap, topics.dlq, 1, settle=0.5)
        letter = DeadLetterHeaders.from_kafka(dead.headers)
        assert dead.key == b"meta" and letter.error_kind == ErrorKind.METADATA_TOO_LARGE
        assert "over the limit of 65536" in letter.error_detail
        deadline = time.monotonic() + 30
        while worker.intake.checkpoint.in_flight_bytes() or worker.metrics.paused._value.get():
            assert time.monotonic() < deadline, "the bytes were never released"
            await asyncio.sleep(0.05)
    finally:
        held.go.set()
        worker.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
