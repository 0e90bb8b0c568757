"""HTTP-only serving (`run --http-only`, `MODERATION_HTTP_ONLY`): the Perspective-compatible API
without Kafka, as Coral Talk calls it; its refusals; and a drain that answers what is queued.

No broker is started here: the worker is pointed at a loopback port nothing listens on, so any
attempt to reach Kafka would fail the start (exit 1) or show in its log."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import orjson
import pytest

from testing.http import http_get, http_post, metric_sample
from testing.in_process import settings_for
from testing.ports import free_port
from testing.topics import Topics
from testing.wait import wait_until, wait_until_async
from testing.worker_process import QUICK_ENV, REPO_ROOT, WorkerProcess, refusal_line, worker_env
from worker.app import Worker, install_signal_handlers
from worker.backends.backend import Backend, TokenBatch
from worker.backends.model import ServedModel, load_served_model

CLOSED = "127.0.0.1:9"  # the discard port: nothing listens on loopback


def coral_request(text: str) -> bytes:
    """The body Coral Talk's toxicity check sends to its Perspective endpoint: one comment,
    TOXICITY only, doNotStore."""
    return orjson.dumps(
        {
            "comment": {"text": text},
            "doNotStore": True,
            "requestedAttributes": {"TOXICITY": {}},
            "languages": ["en"],
        }
    )


POLICY = 'version: "{version}"\nthresholds:\n  toxic: 0.8\n'


@pytest.fixture
def http_only_worker(tiny_model_dir: Path, tmp_path: Path) -> Iterator[WorkerProcess]:
    """`python -m worker run --http-only` with the tiny model, the API on a free port, a
    threshold policy file (`policy.yaml`, polled every 0.2 s), Kafka at a closed port, logging
    at DEBUG; killed at teardown if still running."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(version="coral-1"))
    env = worker_env(
        CLOSED, Topics.fresh("http-only"), free_port(),
        QUICK_ENV | {
            "MODERATION_MODEL": str(tiny_model_dir),
            "MODERATION_HTTP_API_PORT": str(free_port()),
            "MODERATION_LOG_LEVEL": "DEBUG",
            "MODERATION_POLICY_FILE": str(policy),
            "MODERATION_POLICY_POLL_INTERVAL_S": "0.2",
        },
    )  # fmt: skip
    worker = WorkerProcess(env, tmp_path / "worker.log", args=["--http-only"])
    yield worker
    worker.kill()


def test_coral_talks_request_is_answered_without_kafka(http_only_worker: WorkerProcess) -> None:
    worker = http_only_worker
    worker.wait_ready(90)  # /readyz 200 with no broker to join
    endpoint = f"{worker.api_url}/v1alpha1"  # what Coral's "Perspective endpoint" is set to
    before = worker.get("/metrics").body
    result = http_post(
        f"{endpoint}/comments:analyze?key=K", coral_request("You are a complete idiot.")
    )
    assert result.status == 200, result.body
    value = json.loads(result.body)["attributeScores"]["TOXICITY"]["summaryScore"]["value"]
    assert 0.0 <= value <= 1.0
    after = worker.get("/metrics").body
    counted = metric_sample(after, "moderation_http_requests_total", method="analyze", code="200")
    assert counted == 1 + metric_sample(
        before, "moderation_http_requests_total", method="analyze", code="200"
    )
    assert metric_sample(after, "moderation_batch_size_count") > metric_sample(
        before, "moderation_batch_size_count"
    )
    assert metric_sample(after, "moderation_ready") == 1
    assert metric_sample(after, "moderation_startup_seconds", phase="warm_up") > 0
    assert 'phase="http_listen"' in after and 'phase="kafka_join"' not in after
    # the policy file is read and hot-reloaded as with Kafka
    assert 'moderation_policy_info{version="coral-1"}' in after
    (Path(worker.env["MODERATION_POLICY_FILE"])).write_text(POLICY.format(version="coral-2"))
    wait_until(
        lambda: 'moderation_policy_info{version="coral-2"}' in worker.get("/metrics").body,
        30, message="the policy was not reloaded",
    )  # fmt: skip

    assert worker.terminate(timeout=60) == 0
    log = worker.log()
    assert f"serving HTTP only on port {worker.env['MODERATION_HTTP_API_PORT']} (no Kafka)" in log
    assert "stopped (drained=True, in flight=0)" in log
    # Nothing tried to reach Kafka: no aiokafka logger line, no group, no connection error. The
    # settings line names the (unused) broker address; beyond it only "(no Kafka)" says Kafka.
    lines = [line for line in log.splitlines() if " INFO worker: starting with " not in line]
    kafka = [line for line in lines if "kafka" in line.lower() or CLOSED in line]
    assert kafka == [line for line in lines if "(no Kafka)" in line], kafka


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "needs MODERATION_HTTP_API_PORT"),
        (
            {"MODERATION_HTTP_API_PORT": "0", "MODERATION_SHADOW_MODEL": "/nonexistent"},
            "cannot run a shadow model",
        ),
    ],
    ids=["no-api-port", "shadow-model"],
)
def test_http_only_refuses_what_it_cannot_serve(env: dict[str, str], words: str) -> None:
    """One line, exit 2, before the model is loaded (the shadow path does not even exist)."""
    line = refusal_line({"MODERATION_HTTP_ONLY": "1"} | env)
    assert words in line and "MODERATION_HTTP_ONLY" in line, line


def test_the_flag_is_the_setting() -> None:
    """`--http-only` sets what MODERATION_HTTP_ONLY sets (refused here: no API port)."""
    env = worker_env(CLOSED, Topics.fresh("flag"), 0, QUICK_ENV)
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--http-only"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "moderation-worker: invalid settings: http_only (MODERATION_HTTP_ONLY, --http-only) "
        "needs MODERATION_HTTP_API_PORT: the HTTP API is all it serves"
    ]


# ----------------------------------------------------------------------- drain, in process


class GatedBackend(Backend):
    """The real backend; its first forward pass waits until the test opens the gate."""

    def __init__(self, real: Backend) -> None:
        self.real = real
        self.kind, self.device, self.precision = real.kind, real.device, real.precision
        self.labels = real.labels
        self.entered, self.gate = threading.Event(), threading.Event()

    def warm_up(self, shapes: object) -> None:
        self.real.warm_up(shapes)  # type: ignore[arg-type]

    def infer(self, batch: TokenBatch) -> np.ndarray:
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(30)
        return self.real.infer(batch)


def no_kafka_client(*args: object, **kwargs: object) -> None:
    raise AssertionError("a Kafka client was built in HTTP-only mode")


async def test_sigterm_answers_the_queued_requests_and_refuses_new_ones(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM while one request is being scored and another waits in the queue: both are
    answered (200), a request after the signal gets 503, /readyz turns 503, exit code 0."""
    import aiokafka

    monkeypatch.setattr(aiokafka.AIOKafkaConsumer, "__init__", no_kafka_client)
    monkeypatch.setattr(aiokafka.AIOKafkaProducer, "__init__", no_kafka_client)
    real = load_served_model(tiny_model_dir, device="cpu", precision="fp32")
    backend = GatedBackend(real.backend)
    model: ServedModel = dataclasses.replace(real, backend=backend)
    settings = settings_for(
        CLOSED, Topics.fresh("http-only-drain"), http_only=True, http_api_port=free_port(),
        http_api_host="127.0.0.1", shutdown_grace_s=30,
    )  # fmt: skip
    worker = Worker(settings, model)
    assert worker.intake is None
    install_signal_handlers(worker)  # as `serve` does: SIGTERM drains
    running = asyncio.create_task(worker.run())
    await wait_until_async(worker.is_ready, 30, message="never ready")
    ready_url = f"http://127.0.0.1:{worker.http.port}/readyz"
    analyze = f"http://127.0.0.1:{settings.http_api_port}/v1alpha1/comments:analyze"
    texts = ["you are an idiot", "thanks for the fix"]
    async with aiohttp.ClientSession() as session:

        async def post(text: str) -> tuple[int, dict[str, object]]:
            headers = {"Content-Type": "application/json"}
            async with session.post(analyze, data=coral_request(text), headers=headers) as r:
                return r.status, await r.json()

        first = asyncio.create_task(post(texts[0]))
        assert await asyncio.to_thread(backend.entered.wait, 30)  # on the inference thread
        second = asyncio.create_task(post(texts[1]))
        await wait_until_async(lambda: len(worker.queue) == 1, 10, message="not queued")
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until_async(lambda: not worker.is_ready(), 10, message="no drain")
        late_status, late = await post("one more")
        assert late_status == 503 and late["error"]["status"] == "UNAVAILABLE"  # type: ignore[index]
        assert (await asyncio.to_thread(http_get, ready_url)).status == 503
        assert not running.done() and not first.done() and not second.done()
        backend.gate.set()
        answers = await asyncio.wait_for(asyncio.gather(first, second), 30)
    assert await asyncio.wait_for(running, 30) == 0
    alone = real.score(texts)
    toxicity = real.contract.labels.index(real.contract.api_attributes["TOXICITY"])
    for (status, body), row in zip(answers, alone, strict=True):
        assert status == 200, body
        score = body["attributeScores"]["TOXICITY"]["summaryScore"]["value"]  # type: ignore[index]
        assert score == pytest.approx(float(row[toxicity]), abs=1e-5)
