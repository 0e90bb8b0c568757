"""The backend loop: take a batch when the backend is free, infer it, publish it.

One task, one inference thread. Publishing batch n (on the event loop) overlaps the forward
pass of batch n+1 (on the thread). While a batch is scored, a batch that fills up in the queue
(`max_batch_size` records) is handed to the thread at once, to start when the batch before ends:
it could not grow by waiting, and the thread then goes from one to the next without a round trip
through the event loop (at most one such batch waits behind the one in progress; a partial batch
is still cut only when the backend is free). A batch the backend fails on is bisected until the
records it fails on alone are found: those are dead-lettered (`inference_failed`), the rest scored.
Each batch follows one threshold policy (read once; worker/policy.py) and, with a shadow model
attached, is handed to it without waiting (worker/shadow.py).
Texts of HTTP requests (`Reply`, `worker/http/api.py`) share the batches; each is answered as
soon as its batch is scored (`answer_replies`), before any publishing; one the backend fails on
alone gets its error. Without a publisher (`MODERATION_HTTP_ONLY`: no Kafka) every entry is
such a text, and nothing is published.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from schemas import ErrorKind
from worker.backends.model import ServedModel
from worker.metrics import Metrics
from worker.pipeline.batching import BatchQueue, Tokenized
from worker.pipeline.publish import Publisher, encode_output
from worker.pipeline.records import InFlight, Reply
from worker.policy import Policy, PolicyHolder
from worker.shadow import ShadowScorer
from worker.tracing import Tracing

log = logging.getLogger(__name__)

Outcome = np.ndarray | Exception  # a row of probabilities, or why the record has none


@dataclass(slots=True)
class Scoring:
    """A batch handed to the inference thread, and its probabilities to come."""

    batch: list[Tokenized]
    started: float = 0.0  # time.monotonic() when its forward pass began (set on the thread)
    ended: float = 0.0  # ... and ended
    probabilities: asyncio.Future[np.ndarray] = field(init=False)


class InferenceLoop:
    def __init__(
        self,
        queue: BatchQueue,
        model: ServedModel,
        executor: Executor,
        publisher: Publisher | None,
        metrics: Metrics,
        *,
        policies: PolicyHolder | None = None,
        shadow: ShadowScorer | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._queue = queue
        self._model = model
        self._executor = executor
        self._publisher = publisher  # None: HTTP only, every entry is a `Reply`
        self._metrics = metrics
        self._policies = policies or PolicyHolder(model.contract)
        self._shadow = shadow  # handed each scored batch; never waited on
        self._tracing = tracing

    async def run(self) -> None:
        """Until the queue is closed and empty."""
        publishing: asyncio.Task[None] | None = None
        ahead: Scoring | None = None  # a full batch handed to the thread behind the current one
        while True:
            if ahead is not None:
                current, ahead = ahead, None
            else:
                batch = await self._queue.next_batch()
                if not batch:
                    break
                current = self._start(batch)
            ahead = await self._start_next_full_batch(current)
            batch = current.batch
            if self._tracing is None:
                outcomes = await self._outcomes(current)
            else:
                with self._tracing.batch([entry.item for entry in batch]):
                    outcomes = await self._outcomes(current)
            answer_replies(batch, outcomes)
            self._observe_stages(current)
            policies = self._policies.current  # one policy per batch: reloads swap between
            if self._shadow is not None:  # the Kafka records of the batch (not HTTP texts)
                kafka = [i for i, entry in enumerate(batch) if isinstance(entry.item, InFlight)]
                if kafka:
                    self._shadow.submit(
                        [batch[i] for i in kafka], [outcomes[i] for i in kafka], policies
                    )
            if self._publisher is None:  # HTTP only: every text was answered above
                continue
            if publishing is not None:
                await publishing
            ended = current.ended or time.monotonic()  # 0: failed and bisected
            publishing = asyncio.create_task(
                self._publish(batch, outcomes, policies.primary, ended)
            )
        if publishing is not None:
            await publishing

    def _start(self, batch: list[Tokenized]) -> Scoring:
        """Hand `batch` to the inference thread (it runs once the batches before it are done)."""
        now = time.monotonic()
        for entry in batch:
            self._metrics.queue_wait.observe(now - entry.enqueued_at)
        loop = asyncio.get_running_loop()
        scoring = Scoring(batch)
        scoring.probabilities = loop.run_in_executor(self._executor, self._infer, scoring)
        return scoring

    def _observe_stages(self, scoring: Scoring) -> None:
        """Each Kafka record's queue wait (queued -> its forward pass began: waiting behind the
        batch before included) and its batch's forward pass (`moderation_stage_seconds`)."""
        if scoring.ended <= 0:  # failed (and bisected): not part of the budget
            return
        queue_wait, forward = self._metrics.stages["queue_wait"], self._metrics.stages["forward"]
        took = scoring.ended - scoring.started
        for entry in scoring.batch:
            if isinstance(entry.item, InFlight):
                queue_wait.observe(max(0.0, scoring.started - entry.enqueued_at))
                forward.observe(took)

    async def _start_next_full_batch(self, current: Scoring) -> Scoring | None:
        """Until `current` is scored: the next batch, started, if it fills up before then."""
        full = asyncio.ensure_future(self._queue.next_full_batch())
        try:
            await asyncio.wait((current.probabilities, full), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this task cancelled: the wait for a full batch goes with it
            full.cancel()
            raise
        if not full.done():  # scored before a batch filled up
            full.cancel()
            return None
        batch = full.result()
        return self._start(batch) if batch else None

    async def _outcomes(self, scoring: Scoring) -> list[Outcome]:
        """Probabilities of each record; on failure, halves are retried down to single records."""
        batch = scoring.batch
        try:
            probabilities = await scoring.probabilities
        except Exception as exc:
            self._metrics.errors.labels("inference").inc()
            if len(batch) == 1:
                return [exc]
            log.warning("inference failed on a batch of %d (%r): bisecting", len(batch), exc)
            middle = len(batch) // 2
            first = await self._outcomes(self._start(batch[:middle]))
            return first + await self._outcomes(self._start(batch[middle:]))
        return list(probabilities)

    def _infer(self, scoring: Scoring) -> np.ndarray:
        """On the inference thread: forward passes of one batch, timed."""
        batch = scoring.batch
        started = time.monotonic()
        probabilities = self._model.infer([entry.ids for entry in batch])
        ended = time.monotonic()
        self._metrics.inference.observe(ended - started)
        self._metrics.batch_size.observe(len(batch))
        scoring.started, scoring.ended = started, ended
        return probabilities

    async def _publish(
        self, batch: list[Tokenized], outcomes: list[Outcome], policy: Policy, ended: float
    ) -> None:
        assert self._publisher is not None
        scored_at = int(time.time() * 1000)
        publish = self._metrics.stages["publish"]  # forward pass ended -> handed to the producer
        for entry, outcome in zip(batch, outcomes, strict=True):
            if isinstance(entry.item, Reply):  # an HTTP text, answered already
                continue
            if isinstance(outcome, Exception):
                await self._dead_letter(entry, outcome)
                continue
            try:
                value = encode_output(entry.item, outcome, self._model.contract, scored_at, policy)
            except ValueError as exc:  # e.g. a NaN score, which the output schema refuses
                await self._dead_letter(entry, exc)
                continue
            await self._publisher.send_output(entry.item, value, outcome, policy.version)
            publish.observe(max(0.0, time.monotonic() - ended))

    async def _dead_letter(self, entry: Tokenized, exc: Exception) -> None:
        assert isinstance(entry.item, InFlight) and self._publisher is not None
        await self._publisher.send_dead_letter(
            entry.item, ErrorKind.INFERENCE_FAILED, f"the model failed on this text: {exc!r}"
        )


def answer_replies(batch: list[Tokenized], outcomes: list[Outcome]) -> None:
    """Hand each HTTP text (`Reply`) of a scored batch its row, or the error it failed with."""
    for entry, outcome in zip(batch, outcomes, strict=True):
        if isinstance(entry.item, Reply):
            entry.item.resolve(outcome)
