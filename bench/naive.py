"""(c) The naive baseline: what a hand-rolled consumer looks like. One message at a time: fetch
it, parse it, call `transformers.pipeline` on it, produce the result, wait for the broker's
acknowledgement, commit the offset, next."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from transformers import pipeline

from bench.end_to_end import produce_all
from testing.topics import Topics, fresh_topics
from worker.backends.model import resolve_source
from worker.config import Settings


async def _consume_one_at_a_time(
    bootstrap: str, topics: Topics, classify: Any, n: int, max_seconds: float
) -> tuple[int, float]:
    consumer = AIOKafkaConsumer(
        topics.input, bootstrap_servers=bootstrap, group_id=topics.group,
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=1,
    )  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    done, started = 0, None
    try:
        while done < n:
            record = await consumer.getone()
            if started is None:
                started = time.perf_counter()
            comment = json.loads(record.value)
            result = classify(comment["text"])
            if result and isinstance(result[0], list):  # some versions nest one text's labels
                result = result[0]
            scores = {row["label"]: row["score"] for row in result}
            value = json.dumps({"id": comment["id"], "scores": scores}).encode()
            await (await producer.send(topics.output, value=value, key=record.key))
            await consumer.commit()
            done += 1
            if time.perf_counter() - started > max_seconds:
                break
    finally:
        await producer.stop()
        await consumer.stop()
    return done, time.perf_counter() - (started or time.perf_counter())


def run_naive(
    settings: Settings, bootstrap: str, texts: list[str], max_seconds: float, partitions: int
) -> dict[str, Any]:
    """Up to len(texts) messages or `max_seconds`, whichever ends first."""
    classify = pipeline(
        "text-classification", model=str(resolve_source(settings.model)),
        device="cpu" if settings.device == "auto" else settings.device, top_k=None,
        function_to_apply="sigmoid", truncation=True, max_length=settings.max_length,
    )  # fmt: skip
    classify(texts[0])  # warm-up
    topics = fresh_topics(bootstrap, "bench-naive", partitions, output_partitions=partitions)
    asyncio.run(produce_all(bootstrap, topics.input, texts))
    done, elapsed = asyncio.run(
        _consume_one_at_a_time(bootstrap, topics, classify, len(texts), max_seconds)
    )
    return {"comments_per_s": done / elapsed, "messages": done, "seconds": elapsed}
