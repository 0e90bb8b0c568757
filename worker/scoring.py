"""The batch loop: micro-batches from the queue, scored off the event loop, then published."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

import numpy as np
from transformers import BatchEncoding

from schemas import ErrorKind
from worker.batching import MicroBatcher
from worker.infer import Scorer
from worker.metrics import Metrics
from worker.publish import Publisher, score_message
from worker.records import InFlight

log = logging.getLogger(__name__)


Buckets = list[tuple[list[int], BatchEncoding]]


class BatchScorer:
    """Owns the inference side: one batch at a time through `scorer` on `executor`.

    Tokenization and the forward pass run in executor threads, so the event loop keeps
    fetching, heartbeating and handling acknowledgements while a batch is scored. With a
    `tokenize_executor`, batches go through a two-stage pipeline: batch n+1 is tokenized (on
    that thread) while batch n is in the forward pass; batches are published in order.
    """

    def __init__(
        self,
        batcher: MicroBatcher[InFlight],
        scorer: Scorer,
        executor: Executor,
        publisher: Publisher,
        metrics: Metrics,
        tokenize_executor: Executor | None = None,
    ) -> None:
        self.batcher = batcher
        self.scorer = scorer
        self.executor = executor
        self.tokenize_executor = tokenize_executor
        self.publisher = publisher
        self.metrics = metrics
        self.model_ref = {"name": scorer.name, "version": scorer.version}

    def score_texts(self, texts: list[str]) -> np.ndarray:
        """Tokenize and infer one batch, timing each stage (runs in the executor thread)."""
        return self.infer_buckets(self.tokenize_texts(texts), len(texts))

    def tokenize_texts(self, texts: list[str]) -> Buckets:
        """Tokenize one batch into length buckets, timed (the tokenizer thread, if any)."""
        started = time.perf_counter()
        buckets = self.scorer.tokenize_buckets(texts)
        self.metrics.tokenization.observe(time.perf_counter() - started)
        return buckets

    def infer_buckets(self, buckets: Buckets, n: int) -> np.ndarray:
        """The forward pass of one tokenized batch, timed (runs in the inference thread)."""
        started = time.perf_counter()
        probabilities = self.scorer.infer_buckets(buckets, n)
        self.metrics.inference.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(n)
        return probabilities

    async def _next_items(self) -> list[InFlight]:
        batch = await self.batcher.next_batch()
        now = time.monotonic()
        for _, enqueued_at in batch:
            self.metrics.queue_wait.observe(now - enqueued_at)
        return [item for item, _ in batch]

    @staticmethod
    def _texts(items: list[InFlight]) -> list[str]:
        return [item.comment.text for item in items if item.comment is not None]

    async def run(self) -> None:
        """Score batches until the batcher is closed and empty."""
        if self.tokenize_executor is not None:
            await self._run_pipelined(self.tokenize_executor)
            return
        loop = asyncio.get_running_loop()
        while items := await self._next_items():
            try:
                probabilities = await loop.run_in_executor(
                    self.executor, self.score_texts, self._texts(items)
                )
            except Exception:
                log.exception("scoring a batch of %d failed", len(items))
                await self._recover(items)
                continue
            await self._publish(items, probabilities)

    async def _run_pipelined(self, tokenize_executor: Executor) -> None:
        """Stage 1 tokenizes batch n+1 while stage 2 infers and publishes batch n."""
        loop = asyncio.get_running_loop()
        handoff: asyncio.Queue[tuple[list[InFlight], Buckets | None] | None] = asyncio.Queue(1)

        async def tokenize_stage() -> None:
            while items := await self._next_items():
                try:
                    buckets = await loop.run_in_executor(
                        tokenize_executor, self.tokenize_texts, self._texts(items)
                    )
                except Exception:
                    log.exception("tokenizing a batch of %d failed", len(items))
                    buckets = None  # stage 2 retries the batch one by one
                await handoff.put((items, buckets))
            await handoff.put(None)

        async def infer_stage() -> None:
            while (entry := await handoff.get()) is not None:
                items, buckets = entry
                if buckets is None:
                    await self._recover(items)
                    continue
                try:
                    probabilities = await loop.run_in_executor(
                        self.executor, self.infer_buckets, buckets, len(items)
                    )
                except Exception:
                    log.exception("scoring a batch of %d failed", len(items))
                    await self._recover(items)
                    continue
                await self._publish(items, probabilities)

        stages = [asyncio.create_task(tokenize_stage()), asyncio.create_task(infer_stage())]
        try:
            await asyncio.gather(*stages)
        finally:
            for stage in stages:
                stage.cancel()

    async def _recover(self, items: list[InFlight]) -> None:
        """A failed batch: retry its texts one by one, dead-letter the ones that fail alone."""
        log.warning("retrying a failed batch of %d one by one", len(items))
        self.metrics.errors.labels("inference").inc()
        await self._score_one_by_one(items)

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
