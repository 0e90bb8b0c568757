"""The feedback topic, read for live quality: a side task in a consumer group of its own.

The group is `<MODERATION_GROUP_ID>-feedback`, shared by the replicas, so each decision is
counted by one of them; it commits its own offsets (auto-commit) and starts from the latest
offset the first time (decisions made before a worker ever ran are not live quality). It never
touches the primary's consumer, checkpoint or commits, and the primary never waits on it: it is
started after the primary and stopped after it drained, and its failures are logged.

Bounded work: a fetch takes at most `MAX_RECORDS` records and `FETCH_MAX_BYTES`; the records are
parsed on a thread, and only the counting (a few dictionary updates per judged label) runs on
the event loop. A record that is not a `Feedback` is counted
(`moderation_feedback_records_total{outcome="invalid"}`) and skipped with a log line naming its
offset, never its content (at most one line per `LOG_EVERY_S`, with the number left unlogged).
A broker error is logged and retried after `RETRY_S`; the task never ends the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from pydantic import ValidationError

from schemas import Feedback
from worker.config import Settings
from worker.lifecycle import Feature, cancel_and_wait, side_task
from worker.metrics import Metrics
from worker.pipeline.kafka_clients import build_feedback_consumer
from worker.quality.tracker import QualityTracker

log = logging.getLogger(__name__)

MAX_RECORDS = 200  # per fetch: the loop's share of one fetch stays small
FETCH_MAX_BYTES = 4 * 1024 * 1024
RETRY_S = 5.0  # after a broker error
LOG_EVERY_S = 10.0  # at most one line per this many seconds about invalid records
STOP_S = 5.0  # for the consumer to commit and leave its group at shutdown


def parse(values: list[tuple[str, bytes | None]]) -> list[tuple[str, Feedback | None]]:
    """(On a thread.) Each record's `Feedback`, or None where it is not one."""
    parsed: list[tuple[str, Feedback | None]] = []
    for where, value in values:
        try:
            parsed.append((where, Feedback.model_validate_json(value or b"")))
        except (ValidationError, ValueError):
            parsed.append((where, None))
    return parsed


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: FeedbackConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._consumer.assigned -= set(revoked)
        self._consumer.show_assignment()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._consumer.assigned |= set(assigned)
        self._consumer.show_assignment()


class FeedbackConsumer(Feature):
    """Reads `MODERATION_FEEDBACK_TOPIC` into the tracker (see the module)."""

    name = "feedback_quality"

    def __init__(self, settings: Settings, tracker: QualityTracker, metrics: Metrics) -> None:
        self._settings = settings
        self._tracker = tracker
        self._metrics = metrics
        self._topic = settings.feedback_topic
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self.assigned: set[TopicPartition] = set()
        self._unlogged = 0
        self._logged_at = float("-inf")

    async def start(self) -> None:
        self._task = side_task(self.run(), self.name)

    def close(self) -> None:
        """Nothing to refuse: decisions are counted until `stop`."""

    async def stop(self) -> None:
        await cancel_and_wait(self._task, STOP_S)
        await self._stop_consumer()

    def show_assignment(self) -> None:
        self._metrics.feedback_partitions.set(len(self.assigned))

    async def run(self) -> None:
        """Connect (retrying), then read and count until cancelled."""
        while True:
            try:
                await self._connect()
                await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a broker error, or anything else: retried, never fatal
                log.warning(
                    "feedback topic %s: %r; live quality retries in %g s", self._topic, exc, RETRY_S
                )
            await self._stop_consumer()
            await asyncio.sleep(RETRY_S)

    async def _connect(self) -> None:
        consumer = build_feedback_consumer(self._settings, FETCH_MAX_BYTES)
        self._consumer = consumer
        consumer.subscribe([self._topic], listener=_Assignment(self))
        await consumer.start()
        log.info(
            "live quality: counting decisions from topic %s (group %s)",
            self._topic, f"{self._settings.group_id}-feedback",
        )  # fmt: skip

    async def _read(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=MAX_RECORDS)
            values = [
                (f"{tp.topic}[{tp.partition}]@{record.offset}", record.value)
                for tp, records in batches.items()
                for record in records
            ]
            if not values:
                continue
            for where, feedback in await asyncio.to_thread(parse, values):
                if feedback is None:
                    self._invalid(where)
                    continue
                try:
                    self._tracker.count(feedback)
                except Exception as exc:  # one record never ends the task
                    self._invalid(where, repr(exc))

    def _invalid(self, where: str, why: str = "not a Feedback record") -> None:
        self._metrics.feedback_records.labels("invalid").inc()
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last line)" if self._unlogged else ""
        log.warning("feedback record %s skipped: %s%s", where, why, more)
        self._logged_at, self._unlogged = now, 0

    async def _stop_consumer(self) -> None:
        consumer, self._consumer = self._consumer, None
        self.assigned.clear()
        self.show_assignment()
        if consumer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STOP_S):
                    await consumer.stop()
