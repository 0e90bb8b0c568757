"""Small aiokafka helpers: create topics, produce (all at once or paced), read everything back,
committed offsets (and waiting for them)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import ConsumerRecord

from testing.wait import wait_until
from worker.pipeline.kafka_clients import Headers

Message = tuple[bytes | None, bytes | None]  # (key, value)


def _over(tls: ssl.SSLContext | None) -> dict[str, Any]:
    """A client's connection options: plaintext, or TLS trusting `tls`."""
    return {} if tls is None else {"security_protocol": "SSL", "ssl_context": tls}


async def create_topics(
    bootstrap: str, names: dict[str, int], *, tls: ssl.SSLContext | None = None
) -> None:
    """Create each topic with its number of partitions (replication factor 1); over TLS when
    given `tls`, the client's context (as `produce` and `read_all`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **_over(tls))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(name, num_partitions=n, replication_factor=1) for name, n in names.items()]
        )
    finally:
        await admin.close()


def comment(id_: str, text: str, **extra: object) -> tuple[bytes, bytes]:
    """A comment record keyed by its id: (id, {"id": id, "text": text, **extra})."""
    return id_.encode(), orjson.dumps({"id": id_, "text": text, **extra})


async def produce(
    bootstrap: str,
    topic: str,
    messages: Iterable[Message | tuple[bytes | None, bytes | None, Headers]],
    linger_ms: int = 5,
    max_batch_size: int = 16384,
    timestamp_ms: int | None = None,
    *,
    tls: ssl.SSLContext | None = None,
) -> int:
    """Produce (key, value) pairs, or (key, value, headers), as fast as the broker takes them
    (acks=all) and wait for every acknowledgement; returns the count. `timestamp_ms`: the
    records' timestamp (default: now)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all",
        max_batch_size=max_batch_size, **_over(tls),
    )  # fmt: skip
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                value=m[1],
                key=m[0],
                headers=m[2] if len(m) > 2 else None,
                timestamp_ms=timestamp_ms,
            )
            for m in messages
        ]
        await asyncio.gather(*futures)
        return len(futures)
    finally:
        await producer.stop()


async def produce_paced(
    bootstrap: str,
    topic: str,
    messages: Iterable[Message],
    rate: float | None = None,
    max_request_size: int = 1_048_576,
    placed: dict[str, tuple[int, int]] | None = None,
    stop: threading.Event | None = None,
    *,
    linger_ms: int = 10,
    sent_at: dict[bytes | None, float] | None = None,
    min_sleep_s: float = 0.005,
) -> tuple[int, float]:
    """Produce with acks=all, message n at n / `rate` seconds from the start (None = as fast as
    possible); a sleep shorter than `min_sleep_s` is skipped (the next send catches up).

    Returns (count, seconds). Waits for every acknowledgement; raises if one failed. `placed`
    (if given) receives key -> (partition, offset); `sent_at` key -> wall-clock time of the send;
    `stop` ends production early.
    """
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, acks="all",
        max_request_size=max_request_size, max_batch_size=1_048_576,
    )  # fmt: skip
    await producer.start()
    started = time.monotonic()
    pending: list[tuple[bytes | None, asyncio.Future]] = []
    count = 0

    async def settle() -> None:
        results = await asyncio.gather(*(f for _, f in pending))
        if placed is not None:
            for (key, _), meta in zip(pending, results, strict=True):
                placed[(key or b"").decode()] = (meta.partition, meta.offset)
        pending.clear()

    try:
        for key, value in messages:
            if stop is not None and stop.is_set():
                break
            if sent_at is not None:
                sent_at[key] = time.time()
            pending.append((key, await producer.send(topic, value=value, key=key)))
            count += 1
            if rate:
                ahead = count / rate - (time.monotonic() - started)
                if ahead > min_sleep_s:
                    await asyncio.sleep(ahead)
            if len(pending) >= 2000:
                await settle()
        await settle()
        return count, time.monotonic() - started
    finally:
        await producer.stop()


async def read_all(
    bootstrap: str,
    topic: str,
    expected: int,
    timeout: float = 60.0,
    settle: float = 0.0,
    *,
    distinct_keys: bool = False,
    partial: bool = False,
    tls: ssl.SSLContext | None = None,
) -> list[ConsumerRecord]:
    """Read `topic` from the start until `expected` records arrived (with `distinct_keys`:
    records with `expected` different keys), then `settle` seconds more to catch extras.
    Raises TimeoutError with the count if fewer arrive, unless `partial` (then returns them)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
        **_over(tls),
    )  # fmt: skip
    await consumer.start()
    records: list[ConsumerRecord] = []
    keys: set[bytes | None] = set()

    def take(_: str, record: ConsumerRecord) -> None:
        records.append(record)
        keys.add(record.key)

    def enough() -> bool:
        return (len(keys) if distinct_keys else len(records)) >= expected

    try:
        if not await consume_until(consumer, take, enough, timeout, settle) and not partial:
            raise TimeoutError(f"{topic}: {len(records)} of {expected} records")
        return records
    finally:
        await consumer.stop()


async def consume_until(
    consumer: AIOKafkaConsumer,
    take: Callable[[str, ConsumerRecord], None],
    done: Callable[[], bool],
    timeout: float,
    settle: float = 0.0,
    max_records: int | None = None,
) -> bool:
    """Hand each record the started `consumer` fetches to `take(topic, record)` until `done()`,
    then `settle` seconds more (to catch extras, e.g. duplicates); whether `done()` held before
    `timeout` seconds (the reading stops then)."""

    async def fetch() -> None:
        batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
        for tp, batch in batches.items():
            for record in batch:
                take(tp.topic, record)

    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            return False
        await fetch()
    end = time.monotonic() + settle
    while time.monotonic() < end:
        await fetch()
    return True


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """Partition -> committed offset of `group` on `topic` (None where it committed none)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    finally:
        await consumer.stop()


def wait_committed(
    bootstrap: str, group: str, topic: str, total: int, timeout: float = 20
) -> dict[int, int | None]:
    """From synchronous code: the committed offsets once `group` has committed `total` records
    of `topic` in all (summed over its partitions); TimeoutError naming them after `timeout` s."""
    last: dict[int, int | None] = {}

    def reached() -> bool:
        last.clear()
        last.update(asyncio.run(committed_offsets(bootstrap, group, topic)))
        return sum(c or 0 for c in last.values()) >= total

    wait_until(
        reached,
        timeout,
        interval=0.3,
        message=lambda: f"{group} committed {last} on {topic}, not {total} records",
    )
    return last
