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
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.latency_budget import histogram_quantile, latency_budget
from testing.http import metric_values
from testing.kafka import comment, create_topics, produce, produce_paced, read_all
from testing.machine_noise import cpu_sample, cpu_split
from testing.topics import Topics, fresh_topics
from testing.worker_process import WorkerProcess, start_worker
from worker.config import Settings


def comment_value(i: int, text: str) -> tuple[bytes, bytes]:
    """The benchmark's i-th comment: key and id `c<i>`."""
    return comment(f"c{i}", text)


async def produce_all(bootstrap: str, topic: str, texts: list[str]) -> float:
    """Produce every text (acks=all), as fast as the broker takes them; returns seconds."""
    started = time.perf_counter()
    messages = [comment_value(i, text) for i, text in enumerate(texts)]
    await produce(bootstrap, topic, messages, linger_ms=20, max_batch_size=1 << 20)
    return time.perf_counter() - started


async def _read_timestamps(
    bootstrap: str, topic: str, expected: int, timeout: float = 120
) -> dict[bytes, int]:
    """Key -> record timestamp of `topic` from the start, until `expected` distinct keys (or
    `timeout`: then what arrived)."""
    records = await read_all(bootstrap, topic, expected, timeout, distinct_keys=True, partial=True)
    return {record.key: record.timestamp for record in records}


def settings_env(settings: Settings) -> dict[str, str]:
    """This process's environment without MODERATION_*, plus the worker's settings as
    MODERATION_* (the broker and topics come from `testing.worker_process.worker_env`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODERATION_")}
    for field, value in settings.model_dump(mode="json").items():
        if value is None or field in ("bootstrap_servers", "sasl_password", "http_api_key"):
            continue
        env[f"MODERATION_{field.upper()}"] = str(value)
    return env


def start_profiler(pid: int, output: Path, rate: int = 50) -> subprocess.Popen[bytes]:
    """Sample process `pid` with py-spy (raw collapsed stacks) until `stop_profiler`."""
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--rate", str(rate),
         "--format", "raw", "--threads", "--output", str(output), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def stop_profiler(profiler: subprocess.Popen[bytes] | None) -> str:
    """SIGINT py-spy (it then writes its output); what it said on stderr."""
    if profiler is None:
        return ""
    profiler.send_signal(signal.SIGINT)
    try:
        _, err = profiler.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()
        _, err = profiler.communicate()
    return err.decode(errors="replace")


@contextmanager
def running_worker(
    settings: Settings,
    bootstrap: str,
    topics: Topics,
    log_path: Path,
    overrides: dict[str, str] | None = None,
) -> Iterator[WorkerProcess]:
    """`python -m worker run` with `settings` (and `overrides`, MODERATION_* variables), ready;
    stopped (SIGTERM) on the way out."""
    worker = start_worker(
        bootstrap, topics, log_path=log_path, base=settings_env(settings),
        overrides={"MODERATION_LOG_LEVEL": "WARNING"} | (overrides or {}), ready_timeout=180,
    )  # fmt: skip
    try:
        yield worker
    finally:
        worker.stop()


def startup_phases(values: dict[str, float]) -> dict[str, float]:
    """The worker's start-up phases (`moderation_startup_seconds{phase}`), and the total to
    ready without the consumer-group join (which the broker, not the worker, decides)."""
    prefix = "moderation_startup_seconds{phase="
    phases = {k[len(prefix) : -1]: v for k, v in values.items() if k.startswith(prefix)}
    phases["ready_minus_join"] = round(sum(phases.values()) - phases.get("kafka_join", 0.0), 3)
    return phases


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
    poll_s: float = 0.5,
    timeout_s: float = 900,
    log_name: str | None = None,
) -> dict[str, Any]:
    """(b): every comment produced first, then the worker drains them. The rate is timed by the
    output records' own timestamps (the worker's publish time): from the first score to the last,
    so that the bench's polling of the metrics endpoint (every `poll_s`, only to know when it
    is done) neither sets the clock nor loads the worker."""
    topics = fresh_topics(bootstrap, "bench-saturation", partitions, output_partitions=partitions)
    if settings.shadow_model is not None:  # the worker's default shadow topic, for these topics
        asyncio.run(create_topics(bootstrap, {f"{topics.output}-shadow": partitions}))
    produce_s = asyncio.run(produce_all(bootstrap, topics.input, texts))
    n = len(texts)
    profiler = None
    if log_name is None:
        shadowed = settings.shadow_model is not None
        log_name = "worker-saturation-shadow.log" if shadowed else "worker-saturation.log"
    with running_worker(settings, bootstrap, topics, work_dir / log_name) as worker:
        if profile_path is not None:
            profiler = start_profiler(worker.pid, profile_path)
        deadline = time.monotonic() + timeout_s
        first: dict[str, float] | None = None
        polled_at: list[float] = []
        while time.monotonic() < deadline:
            values = worker.metrics()
            polled_at.append(time.perf_counter())
            if first is None and values.get("moderation_messages_consumed_total", 0) > 0:
                first, first_at = values, polled_at[-1]
            if _done(values) >= n:
                break
            time.sleep(poll_s)
        else:
            raise TimeoutError(f"worker scored {_done(values):.0f} of {n} in {timeout_s}s")
        if settings.shadow_model is not None:  # its last queued batches, off the primary's clock
            values = _shadow_settled(worker, values, n)
        profiler_log = stop_profiler(profiler)
        exit_code = worker.stop()
    stamps = asyncio.run(_read_timestamps(bootstrap, topics.output, n))
    elapsed = (max(stamps.values()) - min(stamps.values())) / 1000
    assert first is not None
    return {
        "comments_per_s": (len(stamps) - 1) / elapsed,
        "messages": n,
        "seconds": elapsed,
        "produce_seconds": produce_s,
        "distinct_outputs": len(stamps),
        "worker_exit_code": exit_code,
        "stages": _stage_summary(first, values, max(polled_at[-1] - first_at, poll_s)),
        "startup_s": startup_phases(values),
        "profiler_log": profiler_log.strip()[-500:],
        "shadow": None if settings.shadow_model is None else shadow_summary(values, n),
    }


def _shadow_accounted(values: dict[str, float]) -> float:
    return sum(
        values.get(f"moderation_shadow_{name}_total", 0.0)
        for name in ("scored", "dropped", "failures")
    )


def _shadow_settled(
    worker: WorkerProcess, values: dict[str, float], n: int, timeout_s: float = 10.0
) -> dict[str, float]:
    """The worker's metrics once the shadow has accounted for every comment (scored, skipped or
    failed), or after `timeout_s`: the primary may finish while the shadow still holds a batch."""
    deadline = time.monotonic() + timeout_s
    while _shadow_accounted(values) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        values = worker.metrics()
    return values


def shadow_summary(values: dict[str, float], messages: int) -> dict[str, Any]:
    """What the shadow did once the primary was done and the shadow had finished its queue (up
    to 10 s more): comments it scored and compared, skipped (it fell behind: its queue was full)
    and failed (worker/shadow.py)."""
    scored = values.get("moderation_shadow_scored_total", 0.0)
    return {
        "scored": int(scored),
        "dropped": int(values.get("moderation_shadow_dropped_total", 0.0)),
        "failures": int(values.get("moderation_shadow_failures_total", 0.0)),
        "coverage": scored / messages if messages else 0.0,
    }


# The paced load generator's producer linger: 5 ms, Apache Kafka's producer default since 4.0.
# It is inside the bench's clock (a record is stamped when it is sent, and waits up to this long
# before it leaves). At 1 ms nearly every comment was a batch of its own, and tansu's fetch cost
# grows with the batches a partition holds (a consumer reading 1,000/s: tansu 0.38 CPU over the
# first 5,000 records, 0.93 CPU by 20,000 at 1 ms; 0.15 -> 0.39 at 5 ms), CPU taken from the
# worker on the bench's shared machine; Apache Kafka finds a fetch offset through its index.
PACED_LINGER_MS = 5


async def _paced_produce(
    bootstrap: str, topic: str, texts: list[str], rate: float
) -> dict[bytes, float]:
    """Send texts at `rate` per second on a fixed schedule; returns key -> send time."""
    sent: dict[bytes | None, float] = {}
    messages = (comment_value(i, text) for i, text in enumerate(texts))
    await produce_paced(
        bootstrap, topic, messages, rate, linger_ms=PACED_LINGER_MS, sent_at=sent,
        min_sleep_s=0.0005,
    )  # fmt: skip
    return {key: at for key, at in sent.items() if key is not None}


def run_latency(
    settings: Settings,
    bootstrap: str,
    texts: list[str],
    rate: float,
    work_dir: Path,
    partitions: int,
    overrides: dict[str, str] | None = None,
    worker_cpus: set[int] | None = None,
    log_name: str = "worker-latency.log",
) -> dict[str, Any]:
    """Latency at a paced `rate`, and its budget per stage (`bench/latency_budget.py`).
    `overrides`: MODERATION_* variables for this worker; `worker_cpus`: pin the worker to these
    CPUs (as `taskset -c`) once it is ready, to play a slower machine."""
    topics = fresh_topics(bootstrap, "bench-latency", partitions, output_partitions=partitions)
    with running_worker(settings, bootstrap, topics, work_dir / log_name, overrides) as worker:
        if worker_cpus is not None:
            pin_process(worker.pid, worker_cpus)
        time.sleep(1.0)  # let the first fetch settle so the clock measures steady state
        scraped_before = worker.get("/metrics", timeout=2).body
        processes = {"worker": worker.pid, "bench": os.getpid()}  # bench: the load generator
        cpu_start = cpu_sample(processes)
        sent = asyncio.run(_paced_produce(bootstrap, topics.input, texts, rate))
        deadline = time.monotonic() + 120
        while _done(values := worker.metrics()) < len(texts) and time.monotonic() < deadline:
            time.sleep(0.1)
        cpu = cpu_split(cpu_start, cpu_sample(processes))
        scraped_after = worker.get("/metrics", timeout=2).body
    stamps = asyncio.run(_read_timestamps(bootstrap, topics.output, len(texts)))
    inputs = asyncio.run(_read_timestamps(bootstrap, topics.input, len(texts)))
    keys = [key for key in sent if key in stamps]
    latencies = np.array([stamps[key] / 1000 - sent[key] for key in keys], dtype=np.float64)
    latencies = np.clip(latencies, 0.0, None) * 1000
    generator = np.array(
        [inputs[key] / 1000 - sent[key] for key in sent if key in inputs], dtype=np.float64
    )
    generator = np.clip(generator, 0.0, None) * 1000
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
        "budget": latency_budget(scraped_before, scraped_after, generator, latencies),
        "cpu": cpu,
        "batches": _stage_summary(
            metric_values(scraped_before), metric_values(scraped_after), offered_s
        ),
    }


def pin_process(pid: int, cpus: set[int]) -> None:
    """Every thread of process `pid` on `cpus` (what `taskset -a -p` does)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)
