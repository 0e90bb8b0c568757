"""The batch loop: micro-batches from the queue, scored off the event loop, then published."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

import numpy as np

from schemas import ErrorKind
from worker.batching import MicroBatcher
from worker.infer import Scorer
from worker.metrics import Metrics
from worker.publish import Publisher, score_message
from worker.records import InFlight

log = logging.getLogger(__name__)


class BatchScorer:
    """Owns the inference side: one batch at a time through `scorer` on `executor`.

    Tokenization and the forward pass run in the executor thread, so the event loop keeps
    fetching, heartbeating and handling acknowledgements while a batch is scored.
    """

    def __init__(
        self,
        batcher: MicroBatcher[InFlight],
        scorer: Scorer,
        executor: Executor,
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self.batcher = batcher
        self.scorer = scorer
        self.executor = executor
        self.publisher = publisher
        self.metrics = metrics
        self.model_ref = {"name": scorer.name, "version": scorer.version}

    def score_texts(self, texts: list[str]) -> np.ndarray:
        """Tokenize and infer one batch, timing each stage (runs in the executor thread)."""
        started = time.perf_counter()
        buckets = self.scorer.tokenize_buckets(texts)
        tokenized = time.perf_counter()
        probabilities = self.scorer.infer_buckets(buckets, len(texts))
        self.metrics.tokenization.observe(tokenized - started)
        self.metrics.inference.observe(time.perf_counter() - tokenized)
        self.metrics.batch_size.observe(len(texts))
        return probabilities

    async def run(self) -> None:
        """Score batches until the batcher is closed and empty."""
        loop = asyncio.get_running_loop()
        while batch := await self.batcher.next_batch():
            now = time.monotonic()
            items = [item for item, _ in batch]
            for _, enqueued_at in batch:
                self.metrics.queue_wait.observe(now - enqueued_at)
            texts = [item.comment.text for item in items if item.comment is not None]
            try:
                probabilities = await loop.run_in_executor(self.executor, self.score_texts, texts)
            except Exception:
                log.exception("scoring a batch of %d failed; retrying one by one", len(items))
                self.metrics.errors.labels("inference").inc()
                await self._score_one_by_one(items)
                continue
            await self._publish(items, probabilities)

    async def _publish(self, items: list[InFlight], probabilities: np.ndarray) -> None:
        scored_at = int(time.time() * 1000)
        labels = self.scorer.labels
        for item, row in zip(items, probabilities, strict=True):
            value = score_message(
                item, row, labels, self.scorer.flagged(row), self.model_ref, scored_at
            )
            await self.publisher.send_output(item, value)

    async def _score_one_by_one(self, items: list[InFlight]) -> None:
        loop = asyncio.get_running_loop()
        for item in items:
            assert item.comment is not None
            try:
                row = await loop.run_in_executor(
                    self.executor, self.score_texts, [item.comment.text]
                )
            except Exception as exc:
                self.metrics.errors.labels("inference").inc()
                await self.publisher.send_dead_letter(
                    item, ErrorKind.INFERENCE_FAILED, f"the model failed on this text: {exc!r}"
                )
                continue
            await self._publish([item], row)
