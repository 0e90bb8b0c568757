"""(a) The model-only ceiling: tokenize + infer the corpus with the worker's own batching
(`BatchScorer.score_texts` on batches of `max_batch_size`), no Kafka, same torch settings."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import numpy as np

from worker.infer import Scorer
from worker.metrics import Metrics
from worker.scoring import BatchScorer


def batch_scorer_for(scorer: Scorer) -> BatchScorer:
    """The worker's batch scoring step without the Kafka side (only `score_texts` is used)."""
    return BatchScorer(cast(Any, None), scorer, cast(Any, None), cast(Any, None), Metrics())


def run_ceiling(
    scorer: Scorer, texts: list[str], max_batch_size: int, overlap_tokenization: bool = True
) -> dict[str, Any]:
    """Batches of `max_batch_size` in corpus order; with `overlap_tokenization`, batch n+1 is
    tokenized on a second thread while batch n is inferred, as the worker does."""
    scorer.warm_up(max_batch_size)  # as the worker does at start; not timed
    batch_scorer = batch_scorer_for(scorer)  # fresh metrics
    batches = [texts[i : i + max_batch_size] for i in range(0, len(texts), max_batch_size)]
    started = time.perf_counter()
    if overlap_tokenization:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize") as pool:
            upcoming = pool.submit(batch_scorer.tokenize_texts, batches[0])
            for k, batch in enumerate(batches):
                buckets = upcoming.result()
                if k + 1 < len(batches):
                    upcoming = pool.submit(batch_scorer.tokenize_texts, batches[k + 1])
                batch_scorer.infer_buckets(buckets, len(batch))
    else:
        for batch in batches:
            batch_scorer.score_texts(batch)
    elapsed = time.perf_counter() - started
    registry = batch_scorer.metrics.registry
    tokenize_s = registry.get_sample_value("moderation_tokenization_seconds_sum") or 0.0
    infer_s = registry.get_sample_value("moderation_inference_seconds_sum") or 0.0
    return {
        "comments_per_s": len(texts) / elapsed,
        "messages": len(texts),
        "seconds": elapsed,
        "overlap_tokenization": overlap_tokenization,
        "tokenize_share": tokenize_s / elapsed,
        "infer_share": infer_s / elapsed,
    }


def run_single(scorer: Scorer, texts: list[str], n: int = 300) -> dict[str, Any]:
    """Single-comment latency: tokenize + infer one comment at a time (the write-up's ~6 ms
    figure; the GPU goal is <= 2 ms), over `n` real comments after a warm-up."""
    scorer.score(texts[:1])
    timings = []
    for text in texts[:n]:
        started = time.perf_counter()
        scorer.score([text])
        timings.append((time.perf_counter() - started) * 1000)
    return {
        "comments": len(timings),
        "p50_ms": float(np.percentile(timings, 50)),
        "p99_ms": float(np.percentile(timings, 99)),
    }
