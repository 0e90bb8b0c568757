"""Shared fixtures: a real broker, unique topics per test, a tiny random model, worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.broker import free_port, kafka_broker
from tests.http import HttpResult, http_get
from tests.kafka_helpers import create_topics
from worker.bench.end_to_end import Topics

REPO = Path(__file__).resolve().parent.parent
LABELS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with kafka_broker(tmp_path_factory.mktemp("broker") / "broker.log") as bootstrap:
        yield bootstrap


@pytest.fixture
def topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Topics:
    """Fresh input (3 partitions), output and dead-letter topics, and a fresh group id."""
    suffix = f"{request.node.name[:40]}-{uuid.uuid4().hex[:8]}".replace("[", "-").replace("]", "")
    names = Topics(f"in-{suffix}", f"out-{suffix}", f"dlq-{suffix}", f"group-{suffix}")
    asyncio.run(create_topics(kafka_bootstrap, {names.input: 3, names.output: 1, names.dlq: 1}))
    return names


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """A random BERT multi-label classifier (hidden 32) with the real BERT-Tiny tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=512,
        problem_type="multi_label_classification",
        id2label=dict(enumerate(LABELS)), label2id={label: i for i, label in enumerate(LABELS)},
    )  # fmt: skip
    config.label_thresholds = {label: 0.5 for label in LABELS}
    config.model_name = "tiny-test-bert"
    config.model_version = f"seed-{seed}"
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # spread the logits so that scores differ visibly between texts
        model.classifier.weight.mul_(50.0)
    model.save_pretrained(directory, safe_serialization=True)
    AutoTokenizer.from_pretrained(REPO / "worker" / "default_model").save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@dataclass
class WorkerHandle:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str) -> HttpResult:
        return http_get(self.metrics_url + path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/readyz").status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.log()}")


WorkerFactory = Callable[..., WorkerHandle]


@pytest.fixture
def worker_process(
    kafka_bootstrap: str, tiny_model_dir: Path, tmp_path: Path
) -> Iterator[WorkerFactory]:
    """Start `python -m worker run` subprocesses; each is killed at teardown if still running."""
    started: list[WorkerHandle] = []

    def start(
        topics: Topics,
        model: Path | str | None = None,
        extra_env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> WorkerHandle:
        port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
            "MODERATION_INPUT_TOPIC": topics.input,
            "MODERATION_OUTPUT_TOPIC": topics.output,
            "MODERATION_DLQ_TOPIC": topics.dlq,
            "MODERATION_GROUP_ID": topics.group,
            "MODERATION_MODEL": str(model or tiny_model_dir),
            "MODERATION_DEVICE": "cpu",
            "MODERATION_METRICS_HOST": "127.0.0.1",
            "MODERATION_METRICS_PORT": str(port),
            "MODERATION_COMMIT_INTERVAL_MS": "200",
            "MODERATION_SESSION_TIMEOUT_MS": "6000",
            "MODERATION_TORCH_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            **(extra_env or {}),
        }
        log_path = tmp_path / f"worker-{len(started)}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        handle = WorkerHandle(proc, port, log_path, env)
        started.append(handle)
        if wait:
            handle.wait_ready()
        return handle

    yield start
    for handle in started:
        handle.kill()
