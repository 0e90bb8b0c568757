"""The worker run in-process, where a test can swap the backend: poison records, readiness."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import numpy as np
import pytest

from schemas import DeadLetterHeaders, ErrorKind, ScoredComment
from testing.http import http_get
from testing.in_process import settings_for
from testing.kafka import comment, produce, read_all
from testing.ports import free_port
from testing.topics import Topics
from testing.wait import wait_until_async
from worker.app import Worker
from worker.backends.backend import Backend, TokenBatch
from worker.backends.model import ServedModel, load_served_model
from worker.lifecycle import ShutdownTimeouts

pytestmark = pytest.mark.integration


class FailsOnPoison(Backend):
    """The real backend, except that a forward pass containing the token `poison_id` fails."""

    def __init__(self, real: Backend, poison_id: int) -> None:
        self.real = real
        self.poison_id = poison_id
        self.kind, self.device, self.precision = real.kind, real.device, real.precision
        self.labels = real.labels
        self.calls: list[int] = []  # batch size of each forward pass, failed or not

    def warm_up(self, shapes: object) -> None:
        self.real.warm_up(shapes)  # type: ignore[arg-type]

    def infer(self, batch: TokenBatch) -> np.ndarray:
        self.calls.append(len(batch))
        if (batch.input_ids == self.poison_id).any():
            raise RuntimeError("simulated kernel failure")
        return self.real.infer(batch)


async def test_a_record_the_backend_fails_on_is_isolated_and_the_rest_scored(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    """Default batching settings: the 12 records arrive before the worker starts, so they share
    one batch; bisection dead-letters the poisoned one and scores the others as the model
    scores them alone."""
    real = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    [[*_, poison_id, _]] = real.tokenizer.encode(["poison"])  # [CLS] ... poison [SEP]
    backend = FailsOnPoison(real.backend, poison_id)
    model = dataclasses.replace(real, backend=backend)
    texts = {f"m{i}": f"ordinary comment number {i}" for i in range(11)}
    texts["bad"] = "this one is poison"
    await produce(kafka_bootstrap, topics.input, [comment(k, t) for k, t in texts.items()])

    worker = Worker(settings_for(kafka_bootstrap, topics), model)
    running = asyncio.create_task(worker.run())
    outputs = await read_all(kafka_bootstrap, topics.output, 11, settle=0.5)
    dead = await read_all(kafka_bootstrap, topics.dlq, 1, settle=0.5)
    worker.request_stop()
    assert await asyncio.wait_for(running, 30) == 0

    assert sorted(r.key.decode() for r in outputs) == sorted(k for k in texts if k != "bad")
    for record in outputs:
        scores = ScoredComment.model_validate_json(record.value).scores
        alone = real.score([texts[record.key.decode()]])[0]
        np.testing.assert_allclose(list(scores.values()), alone, atol=1e-5)
    assert len(dead) == 1 and dead[0].key == b"bad"
    headers = DeadLetterHeaders.from_kafka(dead[0].headers)
    assert headers.error_kind == ErrorKind.INFERENCE_FAILED
    assert "simulated kernel failure" in headers.error_detail
    assert max(backend.calls) > 1  # the poison really shared a batch with good records
    assert worker.metrics.errors.labels("inference")._value.get() >= 2  # bisected down to it


async def test_ready_only_while_joined_and_healthy(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    settings = settings_for(kafka_bootstrap, topics)
    worker = Worker(settings, load_served_model(tiny_model_dir, device="cpu", precision="fp32"))
    await worker.http.start(settings.metrics_host, settings.metrics_port)
    url = f"http://127.0.0.1:{worker.http.port}"
    try:
        health, ready = await asyncio.gather(
            asyncio.to_thread(http_get, url + "/healthz"),
            asyncio.to_thread(http_get, url + "/readyz"),
        )
        assert health.status == 200
        assert ready.status == 503  # not in the group yet
        worker._joined(set())  # what the rebalance listener calls on joining
        assert (await asyncio.to_thread(http_get, url + "/readyz")).status == 200
        worker.fail(RuntimeError("publish failed"))
        assert (await asyncio.to_thread(http_get, url + "/readyz")).status == 503
    finally:
        await worker.http.stop()


async def test_unreachable_broker_exits_nonzero(topics: Topics, tiny_model_dir: Path) -> None:
    settings = settings_for(f"127.0.0.1:{free_port()}", topics)
    model: ServedModel = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    assert await asyncio.wait_for(Worker(settings, model).run(), 120) == 1


async def test_a_feature_that_cannot_start_stops_the_worker(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The HTTP API's port is taken: the worker drains what it has and exits 1, one log line
    naming the feature (no traceback out of `run`)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = settings_for(
            kafka_bootstrap, topics, http_api_host="127.0.0.1", http_api_port=taken.getsockname()[1]
        )
        model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
        quick = ShutdownTimeouts(kafka_client_stop_s=1.0)  # leaving a group still joining
        assert await asyncio.wait_for(Worker(settings, model, timeouts=quick).run(), 120) == 1
    assert "http_api cannot start" in caplog.text


async def run_until_joined(worker: Worker, timeout_s: float = 60) -> asyncio.Task[int]:
    """`worker.run()` as a task, once the worker has joined its group."""
    running = asyncio.create_task(worker.run())
    await wait_until_async(lambda: worker.joined, timeout_s, message="the worker never joined")
    return running


async def test_shutdown_does_not_wait_forever_for_a_loop_that_ignores_its_cancellation(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A loop that survives its cancellation (as the commit loop did when Python 3.11's
    `asyncio.wait_for` lost one: CPython gh-86296) holds the shutdown for a bounded time only."""
    timeouts = ShutdownTimeouts(task_cancel_s=0.5)
    released = asyncio.Event()

    async def stubborn(interval_s: float) -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(interval_s)
            except asyncio.CancelledError:
                continue

    model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    worker = Worker(settings_for(kafka_bootstrap, topics), model, timeouts=timeouts)
    worker.intake.checkpoint.commit_periodically = stubborn  # type: ignore[method-assign]
    running = await run_until_joined(worker)
    loop = asyncio.get_running_loop()
    worker.request_stop()
    stopping = loop.time()
    done, _ = await asyncio.wait({running}, timeout=timeouts.task_cancel_s + 20)
    took = loop.time() - stopping
    released.set()  # else a shutdown that waits for it would never end
    await running
    assert running in done and running.result() == 0, f"stopped after {took:.1f} s"
    assert worker.stuck == ["commit"]  # `serve` then exits the process at once
    assert "task commit did not end when cancelled" in caplog.text


async def test_a_broker_that_does_not_answer_cannot_hold_the_exit(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path
) -> None:
    """After a fatal error with the broker gone quiet (frozen), the final commit, leaving the
    group and flushing the producer would wait for it; each gives up after a bound, so that the
    process exits and its supervisor restarts it."""
    timeouts = ShutdownTimeouts(kafka_client_stop_s=1.0)
    model = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    worker = Worker(settings_for(kafka_bootstrap, topics), model, timeouts=timeouts)
    hang = asyncio.Event()
    real_stop = worker.intake.consumer.stop

    async def unanswered(*args: object) -> None:  # as aiokafka's, against a frozen broker
        await hang.wait()

    worker.intake.consumer.stop = unanswered  # type: ignore[method-assign]
    worker.intake.consumer.commit = unanswered  # type: ignore[method-assign]
    running = await run_until_joined(worker)
    loop = asyncio.get_running_loop()
    await produce(kafka_bootstrap, topics.input, [comment(f"m{i}", "hello") for i in range(5)])
    await read_all(kafka_bootstrap, topics.output, 5, settle=0.5)  # scored, never committed
    worker.fail(RuntimeError("publishing failed"))
    stopping = loop.time()
    done, _ = await asyncio.wait({running}, timeout=timeouts.kafka_client_stop_s + 20)
    took = loop.time() - stopping
    hang.set()
    await running
    await real_stop()
    assert running in done and running.result() == 1, f"exited after {took:.1f} s"
    assert took >= 2 * timeouts.kafka_client_stop_s * 0.9  # it waited for commit and stop
