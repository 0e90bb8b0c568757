"""Restarts, SIGTERM drains and group membership, with real worker processes."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from testing.kafka import comment, committed_offsets, produce, read_all, wait_committed
from testing.topics import Topics
from testing.worker_process import WorkerFactory

pytestmark = pytest.mark.integration


def batch(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    return [comment(f"{prefix}{i}", f"comment number {i} from {prefix}") for i in range(count)]


def ids(records) -> list[str]:
    return [orjson.loads(r.value)["id"] for r in records]


def test_restart_resumes_without_loss_or_repeat(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory
) -> None:
    first = batch("a", 40)
    asyncio.run(produce(kafka_bootstrap, topics.input, first))  # before the group ever existed
    worker = worker_process(topics)
    asyncio.run(read_all(kafka_bootstrap, topics.output, len(first)))
    assert worker.terminate() == 0

    second = batch("b", 40)
    asyncio.run(produce(kafka_bootstrap, topics.input, second))  # while no worker runs
    worker = worker_process(topics)
    outputs = asyncio.run(read_all(kafka_bootstrap, topics.output, 80, settle=1.5))
    assert worker.terminate() == 0

    seen = ids(outputs)
    assert sorted(seen) == sorted(k.decode() for k, _ in first + second)  # all, each once
    committed = wait_committed(kafka_bootstrap, topics.group, topics.input, 80)
    assert sum(c or 0 for c in committed.values()) == 80  # no more either


def test_sigterm_under_load_drains_commits_and_exits_zero(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory
) -> None:
    messages = batch("s", 3000)
    asyncio.run(produce(kafka_bootstrap, topics.input, messages))
    worker = worker_process(
        topics,
        extra_env={
            "MODERATION_MAX_IN_FLIGHT": "256",
            "MODERATION_MAX_BATCH_SIZE": "32",
            "MODERATION_SHUTDOWN_GRACE_S": "20",
        },
    )
    # Stop it mid-stream: some outputs exist, far from all.
    asyncio.run(read_all(kafka_bootstrap, topics.output, 100))
    started = time.monotonic()
    code = worker.terminate(timeout=40)
    assert code == 0, worker.log()
    assert time.monotonic() - started < 20
    assert "stopped (drained=True, in flight=0)" in worker.log()

    committed = asyncio.run(committed_offsets(kafka_bootstrap, topics.group, topics.input))
    done = sum(c or 0 for c in committed.values())
    outputs = asyncio.run(read_all(kafka_bootstrap, topics.output, done, settle=1.0))
    assert 100 <= done < len(messages), "the worker should have been stopped mid-stream"
    # Committed offsets match the published outputs: nothing committed without its output,
    # nothing published beyond what was committed (a clean drain leaves no duplicates behind).
    assert len(outputs) == done
    assert len(set(ids(outputs))) == done


def test_second_worker_shares_partitions_and_nothing_is_lost(
    kafka_bootstrap: str, topics: Topics, worker_process: WorkerFactory
) -> None:
    env = {"MODERATION_MAX_IN_FLIGHT": "128", "MODERATION_MAX_BATCH_SIZE": "16"}
    first = worker_process(topics, extra_env=env)
    asyncio.run(produce(kafka_bootstrap, topics.input, batch("r", 1500)))
    asyncio.run(read_all(kafka_bootstrap, topics.output, 50))
    second = worker_process(topics, extra_env=env)  # joins mid-stream: a rebalance
    asyncio.run(produce(kafka_bootstrap, topics.input, batch("q", 500)))
    assert second.terminate() == 0  # leaves mid-stream: another rebalance
    outputs = asyncio.run(read_all(kafka_bootstrap, topics.output, 2000, timeout=120, settle=1.0))
    assert first.terminate() == 0
    seen = ids(outputs)
    assert set(seen) == {f"r{i}" for i in range(1500)} | {f"q{i}" for i in range(500)}
    assert len(seen) - len(set(seen)) <= 2 * 128  # duplicates bounded by what was in flight
    assert "assigned" in second.log()


def test_the_log_says_when_the_group_join_starts_and_ends(
    topics: Topics, worker_process: WorkerFactory
) -> None:
    worker = worker_process(topics)
    assert worker.terminate() == 0
    log = worker.log()
    joining = log.find(f"joining group {topics.group} on topic {topics.input} ...")
    joined = log.find(f"joined group {topics.group} in ")
    assert 0 <= joining < joined, log
    assert log.find("ready: start-up phases") > joined
    assert "loss_type" not in log  # the transformers notice tracing used to print
