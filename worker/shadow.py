"""Shadow scoring: a second model scores the primary's batches, off the primary's path.

The inference loop hands each scored batch to `ShadowScorer.submit`, which never waits: the
batch joins a bounded queue (`MODERATION_SHADOW_QUEUE_BATCHES`); when the queue is full the
batch is dropped and counted (`moderation_shadow_dropped_total`), so a slow shadow costs the
primary its CPU share, never a wait. The shadow has its own thread, its own producer and its own
task: it takes no part in acknowledgements or commits, and a failure (inference, encoding,
publishing) is logged (at most every `LOG_EVERY_S`) and counted, never raised to the primary.

Token ids are reused when both models have the same tokenizer (and truncation length); else the
shadow tokenizes the texts itself. Outputs go to the shadow topic in the output format, with the
shadow's model name and version, its flags under the same policy as the primary's (over the
shadow's own artifact thresholds). Agreement per label: flag flips by direction
(`moderation_shadow_flag_flips_total`) and |primary - shadow|
(`moderation_shadow_score_difference`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaProducer

from worker.backends.backend import ModelLoadError
from worker.backends.model import ServedModel, load_from_settings
from worker.config import Settings
from worker.lifecycle import Feature, ShutdownTimeouts, cancel_and_wait, side_task
from worker.metrics import FLIP_DIRECTIONS, Metrics
from worker.pipeline.batching import Tokenized, warm_up_shapes
from worker.pipeline.publish import encode_output
from worker.pipeline.tokenizer import TextTokenizer
from worker.policy import Policies

log = logging.getLogger(__name__)

LOG_EVERY_S = 30.0


def same_tokenizer(a: TextTokenizer, b: TextTokenizer) -> bool:
    """Whether both give the same ids for every text: the same serialized tokenizer (vocabulary,
    normalizer, pre-tokenizer, post-processor) and the same truncation length."""
    return (
        a.max_length == b.max_length and a.pad_id == b.pad_id and a.serialized() == b.serialized()
    )


def load_shadow(settings: Settings, primary: ServedModel) -> ServedModel:
    """The shadow model, with the primary's runtime settings, checked and warmed up;
    `ModelLoadError` (one line, naming the shadow) if it cannot be served beside the primary."""
    assert settings.shadow_model is not None
    try:
        shadow = load_from_settings(settings.model_copy(update={"model": settings.shadow_model}))
        check_shadow(primary, shadow)
    except ModelLoadError as exc:
        raise ModelLoadError(f"shadow model: {exc}") from None
    shadow.backend.warm_up(
        list(warm_up_shapes(settings.max_batch_size, settings.token_budget, settings.max_length))
    )
    contract = shadow.contract
    log.info(
        "shadow model %s (version %s) on %s, %s, %s; scores go to %s",
        contract.model_name, contract.model_version, shadow.backend.device,
        shadow.backend.precision, shadow.backend.kind, settings.shadow_output_topic,
    )  # fmt: skip
    collapsed = contract.collapse_warning()
    if collapsed is not None:
        log.warning("shadow %s", collapsed)
    return shadow


def check_shadow(primary: ServedModel, shadow: ServedModel) -> None:
    """A shadow is compared label by label: it must have the primary's labels (any order)."""
    if set(shadow.contract.labels) != set(primary.contract.labels):
        raise ModelLoadError(
            f"shadow model {shadow.contract.model_name}: its labels "
            f"{list(shadow.contract.labels)} are not the primary's {list(primary.contract.labels)}"
        )


@dataclass(frozen=True, slots=True)
class _Job:
    entries: list[Tokenized]
    primary: np.ndarray  # (n, labels) the primary's scores, in the primary's label order
    policies: Policies  # the policies the primary's outputs of this batch followed


class ShadowScorer(Feature):
    """Scores submitted batches with the shadow model and publishes them (see the module).
    As a `Feature` it owns its producer and its task: `start` starts both (a producer that
    cannot start turns the shadow off, not the worker); `stop`, after the primary drained,
    finishes what is queued and flushes (each within `timeouts.shadow_drain_s`), then stops
    the producer (within `timeouts.kafka_client_stop_s`)."""

    name = "shadow"

    def __init__(
        self,
        model: ServedModel,
        primary: ServedModel,
        producer: AIOKafkaProducer,
        topic: str,
        metrics: Metrics,
        max_batches: int,
        timeouts: ShutdownTimeouts | None = None,
    ) -> None:
        check_shadow(primary, model)
        self.model = model
        self._timeouts = timeouts or ShutdownTimeouts()
        self._task: asyncio.Task[None] | None = None
        self.topic = topic
        self.same_tokens = same_tokenizer(primary.tokenizer, model.tokenizer)
        self._producer = producer
        self._metrics = metrics
        self._max_batches = max_batches
        # column of the shadow's scores for each of the primary's labels
        self._columns = [model.contract.labels.index(label) for label in primary.contract.labels]
        self._labels = primary.contract.labels
        self._pending: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._closed = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="shadow")
        self._last_log: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    # --- the primary's side: never blocks, never raises -------------------------------------

    def submit(self, batch: list[Tokenized], outcomes: list[Any], policies: Policies) -> None:
        """Queue the records the primary scored (its outcomes: score rows or exceptions)."""
        try:
            rows = [
                (e, o) for e, o in zip(batch, outcomes, strict=True) if isinstance(o, np.ndarray)
            ]
            if not rows or self._closed:
                return
            if len(self._pending) >= self._max_batches:
                self._metrics.shadow_dropped.inc(len(rows))
                return
            entries = [entry for entry, _ in rows]
            self._pending.append(_Job(entries, np.stack([o for _, o in rows]), policies))
            self._wake.set()
        except Exception as exc:  # the primary goes on whatever happens here
            self._failed("infer", exc)

    def _end_of_input(self) -> None:
        """No more batches: `run` finishes what is queued, then returns."""
        self._closed = True
        self._wake.set()

    # --- lifecycle (`worker.lifecycle.Feature`) ----------------------------------------------

    async def start(self) -> None:
        try:
            await self._producer.start()
        except Exception as exc:
            log.error("shadow scoring off: its producer cannot start: %r", exc)
            self._metrics.shadow_failures.labels("publish").inc()
            self._end_of_input()
            return
        self._task = side_task(self.run(), self.name)

    async def stop(self) -> None:
        """The primary has drained (its last batches are submitted): finish and release."""
        self._end_of_input()
        drain_s = self._timeouts.shadow_drain_s
        if self._task is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(drain_s):
                    await asyncio.shield(self._task)
            await self.flush(drain_s)
        self.shutdown()
        await cancel_and_wait(self._task, self._timeouts.task_cancel_s)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self._timeouts.kafka_client_stop_s):
                await self._producer.stop()

    # --- the shadow's own task and thread ---------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
            job = self._pending.popleft()
            try:
                outputs = await loop.run_in_executor(self._thread, self._score, job)
            except Exception as exc:
                self._failed("infer", exc)
                continue
            for key, value in outputs:
                try:
                    future = await self._producer.send(self.topic, value=value, key=key)
                except Exception as exc:
                    self._failed("publish", exc)
                    break
                future.add_done_callback(self._delivered)

    async def flush(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for what was sent to be acknowledged (best effort)."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(timeout_s):
                await self._producer.flush()

    def shutdown(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)

    def _score(self, job: _Job) -> list[tuple[bytes | None, bytes]]:
        """On the shadow thread: infer, compare with the primary, encode the outputs."""
        items = [entry.item for entry in job.entries]
        if self.same_tokens:
            ids = [entry.ids for entry in job.entries]
        else:
            ids = self.model.tokenizer.encode(
                [item.comment.text for item in items if item.comment is not None]
            )
        scores = self.model.infer(ids)
        self._compare(job, scores)
        scored_at = int(time.time() * 1000)
        contract, policy = self.model.contract, job.policies.shadow
        return [
            (item.record.key, encode_output(item, row, contract, scored_at, policy))
            for item, row in zip(items, scores, strict=True)
        ]

    def _compare(self, job: _Job, scores: np.ndarray) -> None:
        items = [entry.item for entry in job.entries]
        primary_policy, shadow_policy = job.policies.primary, job.policies.shadow
        assert shadow_policy is not None
        shadow = scores[:, self._columns]
        primary_flags = job.primary >= primary_policy.thresholds_for(items)
        shadow_flags = shadow >= shadow_policy.thresholds_for(items)[:, self._columns]
        shadow_only = (shadow_flags & ~primary_flags).sum(axis=0)
        primary_only = (primary_flags & ~shadow_flags).sum(axis=0)
        diff = np.abs(job.primary.astype(np.float64) - shadow)
        m = self._metrics
        for column, label in enumerate(self._labels):
            for direction, counts in zip(FLIP_DIRECTIONS, (shadow_only, primary_only), strict=True):
                if counts[column]:
                    m.shadow_flips.labels(label, direction).inc(int(counts[column]))
            histogram = m.shadow_score_diff.labels(label)
            for value in diff[:, column].tolist():
                histogram.observe(value)
        m.shadow_scored.inc(len(items))

    def _delivered(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._failed("publish", exc)

    def _failed(self, stage: str, exc: BaseException) -> None:
        self._metrics.shadow_failures.labels(stage).inc()
        self._failures[stage] = count = self._failures.get(stage, 0) + 1
        now = time.monotonic()
        if now - self._last_log.get(stage, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[stage] = now
            log.warning(
                "shadow %s failed (%d so far; the primary is not affected): %r",
                stage, count, exc,
            )  # fmt: skip
