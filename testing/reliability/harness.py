"""Fault-injection harness: a worker supervisor, producers at a rate, an id ledger.

Used by the CI-sized tests in tests/reliability and by `scripts/reliability.py`
(`make reliability`). Everything talks to 127.0.0.1 only and every wait is bounded. The broker
that can be frozen is `testing.broker.TansuBroker`.

- `WorkerSupervisor`: runs the worker (`testing.worker_process.WorkerProcess`), kills it with
  SIGKILL or stops it with SIGTERM, restarts it, samples its resident memory from /proc and
  records how long each restart took to be ready again and to make progress again.
- `Ledger`: what was produced against what came out (outputs and dead letters): lost ids,
  duplicates, ids that were never produced.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from testing.http import metric_sum
from testing.kafka import committed_offsets, consume_until
from testing.topics import Topics
from testing.wait import wait_until
from testing.worker_process import QUICK_ENV, WorkerProcess, start_worker

# --- memory ------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int | None:
    """Resident set size of `pid` from /proc (None when gone or not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


# --- the worker under test ---------------------------------------------------------------


@dataclass
class Restart:
    """One crash (or stop) and what followed it."""

    cause: str  # "kill -9", "exit <code>", ...
    at: float  # monotonic time of the crash
    ready_after_s: float | None = None  # crash -> /readyz 200 of the next process
    progress_after_s: float | None = None  # crash -> the next process acknowledged an output


@dataclass
class WorkerSupervisor:
    """Runs the worker as a separate process; restarts it on demand; watches its memory."""

    bootstrap: str
    topics: Topics
    model: str | None
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: WorkerProcess | None = None
    starts: int = 0
    restarts: list[Restart] = field(default_factory=list)
    peak_rss: int = 0
    ready_rss: list[int] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    rss_samples: list[tuple[float, int]] = field(default_factory=list)
    _sampler: threading.Thread | None = None
    _stop_sampling: threading.Event = field(default_factory=threading.Event)

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.process.proc if self.process is not None else None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"worker-{self.topics.group}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        model = {"MODERATION_MODEL": self.model} if self.model else {}
        self.process = start_worker(
            self.bootstrap, self.topics, log_path=self.log_path,
            overrides=QUICK_ENV | model | self.extra_env, wait=False,
        )  # fmt: skip
        if self._sampler is None:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._stop_sampling.wait(0.1):
            process = self.process
            if process is not None and process.alive():
                rss = rss_bytes(process.pid)
                if rss:
                    self.peak_rss = max(self.peak_rss, rss)
                    self.rss_samples.append((time.monotonic(), rss))

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def get(self, path: str) -> tuple[int, str] | None:
        """(status, body), or None when the process does not answer."""
        if self.process is None:
            return None
        try:
            result = self.process.get(path, timeout=2)
        except OSError:
            return None
        return result.status, result.body

    def metric(self, name: str) -> float | None:
        answer = self.get("/metrics")
        return metric_sum(answer[1], name) if answer and answer[0] == 200 else None

    def ready(self) -> bool:
        """/readyz answers 200: in the group, no fatal error, not stopping."""
        answer = self.get("/readyz")
        return answer is not None and answer[0] == 200

    def acknowledged(self) -> float | None:
        """Outputs plus dead letters acknowledged by the current process."""
        answer = self.get("/metrics")
        if not answer or answer[0] != 200:
            return None
        return metric_sum(answer[1], "moderation_messages_scored_total") + metric_sum(
            answer[1], "moderation_messages_dead_lettered_total"
        )

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds until /readyz answers 200 (`WorkerProcess.wait_ready`); notes the RSS then."""
        assert self.process is not None
        took = self.process.wait_ready(timeout)
        rss = rss_bytes(self.process.pid)
        if rss:
            self.ready_rss.append(rss)
        return took

    def wait_progress(self, timeout: float = 120) -> bool:
        """Whether the worker acknowledged a record within `timeout` s (False if it died)."""

        def outcome() -> str | None:
            if not self.alive():
                return "died"
            return "progress" if (self.acknowledged() or 0) > 0 else None

        try:
            return wait_until(outcome, timeout) == "progress"
        except TimeoutError:
            return False

    def kill9(self) -> Restart:
        assert self.process is not None
        at = time.monotonic()
        self.exit_codes.append(self.process.kill())
        restart = Restart("kill -9", at)
        self.restarts.append(restart)
        return restart

    def restart_after(self, restart: Restart, progress: bool = True, timeout: float = 120) -> None:
        """Start the next process; record when it was ready and when it made progress."""
        self.start()
        self.wait_ready(timeout)
        restart.ready_after_s = time.monotonic() - restart.at
        if progress and self.wait_progress(timeout):
            restart.progress_after_s = time.monotonic() - restart.at

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the process took to exit."""
        assert self.process is not None
        started = time.monotonic()
        code = self.process.terminate(timeout)
        self.exit_codes.append(code)
        return code, time.monotonic() - started

    def log(self) -> str:
        return self.process.log() if self.process is not None else ""

    def close(self) -> None:
        self._stop_sampling.set()
        if self.process is not None:
            self.process.kill()


# --- producing and collecting ------------------------------------------------------------


def message(i: int, prefix: str = "m") -> tuple[bytes, bytes]:
    id_ = f"{prefix}{i}"
    return id_.encode(), orjson.dumps({"id": id_, "text": f"comment {i}: {TEXTS[i % len(TEXTS)]}"})


TEXTS = [
    "thanks for the fix, much appreciated",
    "you are a complete idiot",
    "please stop vandalizing the page",
    "what a load of garbage, go away",
    "short",
]


async def produce_batched(
    bootstrap: str,
    topic: str,
    count: int,
    prefix: str,
    rate: float | None,
    tick_s: float = 0.01,
) -> dict[str, object]:
    """Offer `count` messages `message(i, prefix)` at `rate` messages/s (None = as fast as
    possible) with aiokafka's batch API, acks=all, spread round-robin over the partitions.

    Pacing is real: at each tick the messages due by the end of that tick are appended to one
    batch per partition and sent; a tick that ran late catches up on the next one, and a broker
    that does not take batches fast enough slows the producer down (`send_batch` waits), which
    lowers the measured rate instead of hiding it. The rate is measured from the first send to
    the last acknowledgement. Raises if any batch was refused. Returns the count, the seconds,
    and where each batch landed: (partition, base offset, first index, records), so that
    message i of a batch is at offset base + (i - first).
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0,
        max_batch_size=1_048_576, max_request_size=8 * 1_048_576,
    )  # fmt: skip
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        pending: list[tuple[asyncio.Future, int, int]] = []
        placements: list[tuple[int, int, int, int]] = []

        def settled(block_all: bool = False) -> None:
            while pending and (block_all or pending[0][0].done()):
                future, first, n = pending.pop(0)
                meta = future.result()  # raises if the batch was refused
                placements.append((meta.partition, meta.offset, first, n))

        sent, turn = 0, 0
        started = time.monotonic()
        while sent < count:
            elapsed = time.monotonic() - started
            due = count if not rate else min(count, math.ceil(rate * (elapsed + tick_s)))
            share = max(1, math.ceil((due - sent) / len(partitions)))
            while sent < due:
                partition = partitions[turn % len(partitions)]
                turn += 1
                batch, first = producer.create_batch(), sent
                while sent < min(due, first + share):
                    key, value = message(sent, prefix)
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        break  # full: the rest goes into the next batch
                    sent += 1
                future = await producer.send_batch(batch, topic, partition=partition)
                pending.append((future, first, sent - first))
            settled()
            if rate and sent < count:
                # until the messages already sent were due: then one more tick is due
                await asyncio.sleep(max(0.0, sent / rate - (time.monotonic() - started)))
        await asyncio.gather(*(f for f, _, _ in pending))
        settled(block_all=True)
        took = time.monotonic() - started
        return {"count": sent, "seconds": took, "placements": placements}
    finally:
        await producer.stop()


def placed_from(
    placements: Iterable[tuple[int, int, int, int]], prefix: str
) -> dict[str, tuple[int, int]]:
    """key -> (partition, offset) from `produce_batched`'s placements."""
    return {
        f"{prefix}{first + k}": (partition, base + k)
        for partition, base, first, n in placements
        for k in range(n)
    }


@dataclass
class Collected:
    """Ids seen on the output and dead-letter topics (with multiplicity)."""

    outputs: Counter[str] = field(default_factory=Counter)
    dead: Counter[str] = field(default_factory=Counter)
    dead_reasons: dict[str, str] = field(default_factory=dict)
    records: int = 0
    # (id, CreateTime in ms) of every output and dead letter, to attribute duplicates to crashes
    placements: list[tuple[str, int]] = field(default_factory=list)


def _dead_letter_id(record) -> str:
    headers = dict(record.headers or ())
    return (record.key or b"").decode(errors="replace") or (
        f"@{headers.get('source.partition', b'?').decode()}:"
        f"{headers.get('source.offset', b'?').decode()}"
    )


async def collect(
    bootstrap: str,
    output_topic: str,
    dlq_topic: str,
    expected: set[str],
    timeout: float,
    settle: float = 1.0,
) -> Collected:
    """Read both topics from the start until every expected id was seen (or `timeout`), then
    `settle` seconds more to catch duplicates. Output ids come from the JSON `id`, dead-letter
    ids from the key (the harness always keys a message with its id)."""
    consumer = AIOKafkaConsumer(
        output_topic, dlq_topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        enable_auto_commit=False, max_partition_fetch_bytes=16 * 1_048_576,
        fetch_max_bytes=64 * 1_048_576,
    )  # fmt: skip
    await consumer.start()
    seen = Collected()
    missing = set(expected)

    def take(topic: str, record: ConsumerRecord) -> None:
        seen.records += 1
        if topic == output_topic:
            id_ = orjson.loads(record.value)["id"]
            seen.outputs[id_] += 1
        else:
            id_ = _dead_letter_id(record)
            seen.dead[id_] += 1
            seen.dead_reasons[id_] = dict(record.headers or ())["error.kind"].decode()
        seen.placements.append((id_, record.timestamp))
        missing.discard(id_)

    try:
        await consume_until(consumer, take, lambda: not missing, timeout, settle, 10_000)
        return seen
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class Ledger:
    """Produced ids against collected ones."""

    produced: frozenset[str]
    collected: Collected

    @property
    def lost(self) -> set[str]:
        return set(self.produced) - set(self.collected.outputs) - set(self.collected.dead)

    @property
    def unexpected(self) -> set[str]:
        return (set(self.collected.outputs) | set(self.collected.dead)) - set(self.produced)

    @property
    def duplicates(self) -> int:
        """Extra records beyond one per produced id (outputs and dead letters together)."""
        total = sum(self.collected.outputs.values()) + sum(self.collected.dead.values())
        return total - len(set(self.collected.outputs) | set(self.collected.dead))

    def summary(self) -> dict[str, int]:
        return {
            "produced": len(self.produced),
            "outputs": sum(self.collected.outputs.values()),
            "dead_letters": sum(self.collected.dead.values()),
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "unexpected": len(self.unexpected),
        }


# --- crash accounting --------------------------------------------------------------------


@dataclass
class Snapshot:
    """Taken right after a crash: when it happened and the group's committed offsets."""

    crashed_at_ms: int  # wall clock, comparable with the CreateTime of what the worker sent
    committed: dict[int, int]  # input partition -> committed offset (0 when none)


async def snapshot(bootstrap: str, group: str, input_topic: str, crashed_at: float) -> Snapshot:
    committed = await committed_offsets(bootstrap, group, input_topic)
    return Snapshot(int(crashed_at * 1000), {p: offset or 0 for p, offset in committed.items()})


def uncommitted_window(
    snap: Snapshot, collected: Collected, placed: dict[str, tuple[int, int]]
) -> int:
    """Outputs and dead letters sent before the crash for input records past the commit point:
    what the restarted worker processes (and publishes) again. A late commit that still landed
    only makes the real number smaller."""
    window = 0
    for id_, created_ms in collected.placements:
        if created_ms > snap.crashed_at_ms:
            continue  # sent after this crash
        where = placed.get(id_)
        if where is not None and where[1] >= snap.committed.get(where[0], 0):
            window += 1
    return window
