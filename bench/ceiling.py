"""(a) The model-only ceiling: the worker's tokenizer and backend on the corpus, no Kafka.

As in the worker, chunk n+1 is tokenized on a second thread while batch n is inferred
(`ServedModel.infer`: length-sorted forward passes within the token budget), same settings.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from worker.backends.model import ServedModel
from worker.pipeline.batching import warm_up_shapes


def run_ceiling(model: ServedModel, texts: list[str], max_batch_size: int) -> dict[str, Any]:
    model.backend.warm_up(
        warm_up_shapes(max_batch_size, model.token_budget, model.tokenizer.max_length)
    )  # as the worker does at start; not timed
    batches = [texts[i : i + max_batch_size] for i in range(0, len(texts), max_batch_size)]
    tokenize_s = 0.0

    def encode(batch: list[str]) -> list[list[int]]:
        nonlocal tokenize_s
        started = time.perf_counter()
        ids = model.tokenizer.encode(batch)
        tokenize_s += time.perf_counter() - started
        return ids

    infer_s = 0.0
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
        upcoming = pool.submit(encode, batches[0])
        for k in range(len(batches)):
            ids = upcoming.result()
            if k + 1 < len(batches):
                upcoming = pool.submit(encode, batches[k + 1])
            infer_started = time.perf_counter()
            model.infer(ids)
            infer_s += time.perf_counter() - infer_started
    elapsed = time.perf_counter() - started
    return {
        "comments_per_s": len(texts) / elapsed,
        "messages": len(texts),
        "seconds": elapsed,
        "tokenize_share": tokenize_s / elapsed,
        "infer_share": infer_s / elapsed,
    }


def run_single(model: ServedModel, texts: list[str], n: int = 300) -> dict[str, Any]:
    """Single-comment latency: tokenize + infer one comment at a time (the write-up's ~6 ms
    figure; the GPU goal is <= 2 ms), over `n` real comments after a warm-up."""
    model.score(texts[:1])
    timings = []
    for text in texts[:n]:
        started = time.perf_counter()
        model.score([text])
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "comments": len(timings),
        "p50_ms": float(np.percentile(timings, 50)),
        "p99_ms": float(np.percentile(timings, 99)),
    }
