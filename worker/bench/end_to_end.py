"""(b) The worker end to end through a real broker.

Saturation: the corpus is produced into the input topic first, then `moderation-worker run` is
started as a subprocess; the clock runs from its first consumed record until the broker has
acknowledged every output (the worker's own `messages_scored_total`, polled on /metrics).

Latency: a fresh worker is offered a paced load (a fraction of the saturation rate); each
comment's latency is its output record's timestamp (set when the worker publishes it) minus the
moment the bench sent the input. The worker's own histogram (record timestamp -> output
acknowledged, which also counts the broker's acknowledgement) is reported next to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from worker.bench.broker import free_port
from worker.config import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Topics:
    input: str
    output: str
    dlq: str
    group: str

    @classmethod
    def fresh(cls, name: str) -> Topics:
        run = f"{name}-{uuid.uuid4().hex[:8]}"
        return cls(f"bench-in-{run}", f"bench-out-{run}", f"bench-dlq-{run}", f"bench-{run}")


async def create_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(topics.input, num_partitions=partitions, replication_factor=1),
                NewTopic(topics.output, num_partitions=partitions, replication_factor=1),
                NewTopic(topics.dlq, num_partitions=1, replication_factor=1),
            ]
        )
    finally:
        await admin.close()


def comment_value(i: int, text: str) -> tuple[bytes, bytes]:
    key = f"c{i}".encode()
    return key, orjson.dumps({"id": f"c{i}", "text": text})


async def produce_all(bootstrap: str, topic: str, texts: list[str]) -> float:
    """Produce every text (acks=all), as fast as the broker takes them; returns seconds."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=1 << 20
    )
    await producer.start()
    started = time.perf_counter()
    try:
        futures = []
        for i, text in enumerate(texts):
            key, value = comment_value(i, text)
            futures.append(await producer.send(topic, value=value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def distinct_keys(bootstrap: str, topic: str, expected: int, timeout: float = 120) -> int:
    """How many distinct keys `topic` holds, reading it from the start until `expected` (or
    `timeout`): every comment scored, none missing."""
    stamps = await _read_timestamps(bootstrap, topic, expected, timeout)
    return len(stamps)


def worker_env(settings: Settings, bootstrap: str, topics: Topics, port: int) -> dict[str, str]:
    """The worker's settings as the environment of `moderation-worker run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    for field, value in settings.model_dump(mode="json").items():
        if value is None or field in ("bootstrap_servers", "sasl_password"):
            continue
        env[f"MODERATION_{field.upper()}"] = str(value)
    env |= {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MODERATION_INPUT_TOPIC": topics.input,
        "MODERATION_OUTPUT_TOPIC": topics.output,
        "MODERATION_DLQ_TOPIC": topics.dlq,
        "MODERATION_GROUP_ID": topics.group,
        "MODERATION_METRICS_HOST": "127.0.0.1",
        "MODERATION_METRICS_PORT": str(port),
        "MODERATION_LOG_LEVEL": "WARNING",
        "HF_HUB_OFFLINE": "1",
    }
    return env


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics as {name_without_labels: sum over label sets}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        body = response.read().decode()
    values: dict[str, float] = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        if 'le="' in name_part:
            bound = name_part.split('le="', 1)[1].split('"', 1)[0]
            name = f"{name}{{le={bound}}}"
        values[name] = values.get(name, 0.0) + float(value)
    return values


class WorkerProcess:
    """`python -m worker run` with the given environment, optionally sampled by py-spy."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "worker", "run"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
            )  # fmt: skip
        self.profiler: subprocess.Popen[bytes] | None = None

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text()[-2000:]
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {tail}")
            url = f"http://127.0.0.1:{self.port}/readyz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout}s")

    def metrics(self) -> dict[str, float]:
        return scrape(self.port)

    def start_profiler(self, output: Path, rate: int = 50) -> None:
        """Sample the worker with py-spy (raw collapsed stacks) until `stop_profiler`."""
        py_spy = Path(sys.executable).with_name("py-spy")
        self.profiler = subprocess.Popen(
            [str(py_spy), "record", "--pid", str(self.proc.pid), "--rate", str(rate),
             "--format", "raw", "--threads", "--output", str(output), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def stop_profiler(self) -> str:
        if self.profiler is None:
            return ""
        self.profiler.send_signal(signal.SIGINT)
        try:
            _, err = self.profiler.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.profiler.kill()
            _, err = self.profiler.communicate()
        return err.decode(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@contextlib.contextmanager
def running_worker(
    settings: Settings, bootstrap: str, topics: Topics, log_path: Path
) -> Iterator[WorkerProcess]:
    port = free_port()
    worker = WorkerProcess(worker_env(settings, bootstrap, topics, port), port, log_path)
    try:
        yield worker
    finally:
        worker.stop()


def _done(values: dict[str, float]) -> float:
    return values.get("moderation_messages_scored_total", 0.0) + values.get(
        "moderation_messages_dead_lettered_total", 0.0
    )


def _stage_summary(before: dict[str, float], after: dict[str, float], wall: float) -> dict:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    batches = delta("moderation_batch_size_count")
    return {
        "batches": int(batches),
        "mean_batch_size": delta("moderation_batch_size_sum") / batches if batches else 0.0,
        "tokenize_share_of_wall": delta("moderation_tokenization_seconds_sum") / wall,
        "infer_share_of_wall": delta("moderation_inference_seconds_sum") / wall,
        "mean_queue_wait_ms": 1000
        * delta("moderation_queue_wait_seconds_sum")
        / max(1.0, delta("moderation_queue_wait_seconds_count")),
    }


def run_saturation(
    settings: Settings,
    bootstrap: str,
    texts: list[str],
    work_dir: Path,
    partitions: int,
    profile_path: Path | None,
    poll_s: float = 0.05,
    timeout_s: float = 900,
) -> dict[str, Any]:
    topics = Topics.fresh("saturation")
    asyncio.run(create_topics(bootstrap, topics, partitions))
    produce_s = asyncio.run(produce_all(bootstrap, topics.input, texts))
    n = len(texts)
    with running_worker(settings, bootstrap, topics, work_dir / "worker-saturation.log") as worker:
        worker.wait_ready()
        if profile_path is not None:
            worker.start_profiler(profile_path)
        deadline = time.monotonic() + timeout_s
        started = None
        first: dict[str, float] = {}
        while time.monotonic() < deadline:
            values = worker.metrics()
            now = time.perf_counter()
            if started is None and values.get("moderation_messages_consumed_total", 0) > 0:
                started, first = now, values
            if _done(values) >= n:
                break
            time.sleep(poll_s)
        else:
            raise TimeoutError(f"worker scored {_done(values):.0f} of {n} in {timeout_s}s")
        finished = time.perf_counter()
        profiler_log = worker.stop_profiler()
        exit_code = worker.stop()
    assert started is not None
    elapsed = finished - started
    outputs = asyncio.run(distinct_keys(bootstrap, topics.output, n))
    return {
        "comments_per_s": n / elapsed,
        "messages": n,
        "seconds": elapsed,
        "produce_seconds": produce_s,
        "distinct_outputs": outputs,
        "worker_exit_code": exit_code,
        "stages": _stage_summary(first, values, elapsed),
        "profiler_log": profiler_log.strip()[-500:],
    }


async def _paced_produce(
    bootstrap: str, topic: str, texts: list[str], rate: float
) -> dict[bytes, float]:
    """Send texts at `rate` per second on a fixed schedule; returns key -> send time."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1)
    await producer.start()
    sent: dict[bytes, float] = {}
    futures = []
    try:
        origin = time.time()
        for i, text in enumerate(texts):
            delay = origin + i / rate - time.time()
            if delay > 0.0005:
                await asyncio.sleep(delay)
            key, value = comment_value(i, text)
            sent[key] = time.time()
            futures.append(await producer.send(topic, value=value, key=key))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent


async def _read_timestamps(
    bootstrap: str, topic: str, expected: int, timeout: float = 120
) -> dict[bytes, int]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    stamps: dict[bytes, int] = {}
    try:
        deadline = time.monotonic() + timeout
        while len(stamps) < expected and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    stamps[record.key] = record.timestamp
    finally:
        await consumer.stop()
    return stamps


def histogram_quantile(values: dict[str, float], name: str, q: float) -> float | None:
    """Prometheus-style quantile (linear within the bucket) of a scraped histogram."""
    buckets = sorted(
        (float(key.split("{le=", 1)[1].rstrip("}")), count)
        for key, count in values.items()
        if key.startswith(name + "_bucket{le=")
    )
    if not buckets or buckets[-1][1] == 0:
        return None
    target = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= target:
            if bound == float("inf"):
                return lower_bound
            share = (target - lower_count) / max(count - lower_count, 1e-12)
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return None


def run_latency(
    settings: Settings,
    bootstrap: str,
    texts: list[str],
    rate: float,
    work_dir: Path,
    partitions: int,
) -> dict[str, Any]:
    topics = Topics.fresh("latency")
    asyncio.run(create_topics(bootstrap, topics, partitions))
    with running_worker(settings, bootstrap, topics, work_dir / "worker-latency.log") as worker:
        worker.wait_ready()
        time.sleep(1.0)  # let the first fetch settle so the clock measures steady state
        sent = asyncio.run(_paced_produce(bootstrap, topics.input, texts, rate))
        deadline = time.monotonic() + 120
        while _done(values := worker.metrics()) < len(texts) and time.monotonic() < deadline:
            time.sleep(0.1)
    stamps = asyncio.run(_read_timestamps(bootstrap, topics.output, len(texts)))
    latencies = np.array(
        [stamps[key] / 1000 - sent[key] for key in sent if key in stamps], dtype=np.float64
    )
    latencies = np.clip(latencies, 0.0, None) * 1000
    offered_s = len(texts) / rate
    name = "moderation_end_to_end_latency_seconds"
    return {
        "offered_rate": rate,
        "messages": len(texts),
        "received": int(latencies.size),
        "seconds": offered_s,
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "max_ms": float(latencies.max()),
        "worker_histogram_ms": {
            f"p{int(q * 100)}": None
            if (v := histogram_quantile(values, name, q)) is None
            else 1000 * v
            for q in (0.5, 0.95, 0.99)
        },
    }
