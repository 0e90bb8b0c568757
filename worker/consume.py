"""The consumer side: fetch, decode, track, dispatch; pause when too much is in flight."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord

from worker.batching import MicroBatcher
from worker.config import Settings
from worker.decode import InvalidMessage, decode_comment
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.publish import Publisher
from worker.records import InFlight

log = logging.getLogger(__name__)

FETCH_TIMEOUT_MS = 100


def build_consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=max(1000, settings.session_timeout_ms // 10),
        max_poll_records=settings.max_poll_records,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **settings.kafka_security_kwargs(),
    )


class RebalanceListener(ConsumerRebalanceListener):
    """Before giving partitions up, finish and commit what is in flight for them."""

    def __init__(
        self,
        on_revoked: Callable[[set[TopicPartition]], Awaitable[None]],
        on_assigned: Callable[[set[TopicPartition]], None],
    ) -> None:
        self._on_revoked = on_revoked
        self._on_assigned = on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._on_assigned(set(assigned))


class ConsumeLoop:
    """Takes records from Kafka into the pipeline, never more than `max_in_flight` at once."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        settings: Settings,
        tracker: OffsetTracker,
        batcher: MicroBatcher[InFlight],
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.tracker = tracker
        self.batcher = batcher
        self.publisher = publisher
        self.metrics = metrics
        self.paused = False
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def _apply_backpressure(self) -> int:
        """Pause all partitions at the limit, resume at half of it; returns the room left."""
        limit = self.settings.max_in_flight
        in_flight = self.tracker.in_flight()
        if not self.paused and in_flight >= limit:
            self.paused = True
            log.debug("pausing: %d messages in flight", in_flight)
        elif self.paused and in_flight <= limit // 2:
            self.paused = False
            self.consumer.resume(*self.consumer.assignment())
        if self.paused:  # also covers partitions assigned since the pause began
            self.consumer.pause(*self.consumer.assignment())
        self.metrics.paused.set(1 if self.paused else 0)
        self.metrics.in_flight.set(in_flight)
        return max(0, limit - in_flight)

    async def run(self) -> None:
        while not self._stop.is_set():
            room = self._apply_backpressure()
            batches = await self.consumer.getmany(
                timeout_ms=FETCH_TIMEOUT_MS,
                max_records=max(1, min(room, self.settings.max_poll_records)),
            )
            for tp, records in batches.items():
                for record in records:
                    self._dispatch(tp, record)

    def _dispatch(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        """Synchronous on purpose: a record is tracked before any rebalance can interleave."""
        self.metrics.consumed.labels(tp.topic).inc()
        item = InFlight(record=record, offsets=self.tracker.track(tp, record.offset))
        try:
            item.comment = decode_comment(record.value, self.settings.max_text_bytes)
        except InvalidMessage as bad:
            self.publisher.dead_letter_soon(item, bad.kind, bad.detail)
            return
        self.batcher.put(item)
