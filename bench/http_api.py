"""(d) The Perspective-compatible HTTP API under concurrent clients.

A fresh worker with the API on (`MODERATION_HTTP_API_PORT`) is driven by an asyncio load
generator (aiohttp, one connection per client, no connection limit): at each concurrency level
`c`, `c` clients send `comments:analyze` requests (real corpus comments, TOXICITY and INSULT)
back to back until the level's count is done (or its time is up, once 4 requests per client
are in). Per level: requests/s over the level's wall time, p50/p99 latency as the client sees
it, non-200 answers, and the worker's own batch figures over the level (batches, mean texts per
batch). Run twice: as configured ("batched") and with
`MODERATION_MAX_BATCH_SIZE=1` ("one at a time"), the same requests each time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.end_to_end import running_worker
from testing.ports import free_port
from testing.topics import fresh_topics
from worker.config import Settings

ANALYZE = "/v1alpha1/comments:analyze"
ATTRIBUTES = {"TOXICITY": {}, "INSULT": {}}


def _numbers(requests: int, at_least: int, max_seconds: float | None) -> Iterator[int]:
    """Request numbers 0..`requests`-1, shared by the clients; after `max_seconds` no more past
    the first `at_least` (a slow machine sends fewer requests rather than taking longer)."""
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    for i in range(requests):
        if i >= at_least and deadline is not None and time.monotonic() > deadline:
            return
        yield i


async def _load(
    base_url: str,
    texts: list[str],
    clients: int,
    requests: int,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """`clients` concurrent clients, `requests` requests in all (fewer, but at least 4 per
    client, once `max_seconds` have passed); latencies in ms."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = _numbers(requests, min(requests, 4 * clients), max_seconds)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(base_url, connector=connector) as session:

        async def client() -> None:
            for i in counter:
                body = {
                    "comment": {"text": texts[i % len(texts)]},
                    "requestedAttributes": ATTRIBUTES,
                }
                sent = time.perf_counter()
                async with session.post(ANALYZE, json=body) as response:
                    await response.read()
                    status = response.status
                latencies.append((time.perf_counter() - sent) * 1000)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    values = np.array(latencies, dtype=np.float64)
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": wall,
        "requests_per_s": len(latencies) / wall,
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def run_http_api(
    settings: Settings,
    bootstrap: str,
    texts: list[str],
    work_dir: Path,
    clients: tuple[int, ...] = (1, 16, 256),
    requests: int = 3000,
    level_seconds: float | None = None,
) -> dict[str, Any]:
    """Both modes, every concurrency level; each level sends max(`requests`, 4 x clients), or
    stops after `level_seconds` (having sent at least 4 per client)."""
    limit = settings.http_api_max_text_bytes
    usable = [t for t in texts if t and len(t.encode()) <= limit] or ["ok"]
    modes = {"batched": settings.max_batch_size, "one_at_a_time": 1}
    results: dict[str, Any] = {}
    for mode, batch_size in modes.items():
        topics = fresh_topics(bootstrap, f"bench-http-{mode.replace('_', '-')}")
        port = free_port()
        overrides = {
            "MODERATION_HTTP_API_PORT": str(port),
            "MODERATION_MAX_BATCH_SIZE": str(batch_size),
            # every client may have a request pending: none is refused for the queue's bound
            "MODERATION_HTTP_API_MAX_PENDING": str(max(settings.http_api_max_pending, *clients)),
        }
        log_path = work_dir / f"worker-http-{mode}.log"
        levels = []
        with running_worker(settings, bootstrap, topics, log_path, overrides) as worker:
            base = f"http://127.0.0.1:{port}"
            asyncio.run(_load(base, usable, 4, 40))  # warm the connection path
            for count in clients:
                before = worker.metrics()
                level = asyncio.run(
                    _load(base, usable, count, max(requests, 4 * count), level_seconds)
                )
                after = worker.metrics()
                batches = (
                    after["moderation_batch_size_count"] - before["moderation_batch_size_count"]
                )
                scored = after["moderation_batch_size_sum"] - before["moderation_batch_size_sum"]
                level["batches"] = int(batches)
                level["mean_batch_size"] = scored / batches if batches else 0.0
                levels.append(level)
        results[mode] = {"max_batch_size": batch_size, "levels": levels}
    return results
