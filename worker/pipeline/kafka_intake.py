"""The Kafka side of the worker, one optional part of `worker.app.Worker` (absent with
`MODERATION_HTTP_ONLY`): the consumer and the producer, the checkpoint, the publisher, the consume
loop and the periodic commit.

`Worker` drives it through the same steps in every run: `connect`, `subscribe`, `start_tasks`;
on a stop `stop_fetching`, then (once the inference loop drained) `finish`, `final_commit` and
`close`. Nothing here connects before `connect`: building the clients opens no socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from aiokafka import TopicPartition

from worker.config import Settings
from worker.metrics import Metrics
from worker.pipeline.batching import BatchQueue
from worker.pipeline.checkpoint import Checkpoint, CheckpointListener
from worker.pipeline.consume import ConsumeLoop, IntakeLimits
from worker.pipeline.kafka_clients import build_consumer, build_producer
from worker.pipeline.language import LanguageDetector
from worker.pipeline.publish import Publisher
from worker.pipeline.tokenizer import TextTokenizer
from worker.policy import PolicyHolder
from worker.quality.cache import ScoreCache
from worker.tracing import Tracing

log = logging.getLogger(__name__)


class KafkaIntake:
    """Consume, publish and commit for one worker; the batch queue and the inference loop are
    the worker's (shared with the HTTP API)."""

    def __init__(
        self,
        settings: Settings,
        tokenizer: TextTokenizer,
        tokenizer_thread: Executor,
        queue: BatchQueue,
        metrics: Metrics,
        on_fatal: Callable[[BaseException], None],
        tracing: Tracing | None = None,
        *,
        detector: LanguageDetector | None = None,
        served_languages: tuple[str, ...] = ("en",),
        policies: PolicyHolder | None = None,
        score_cache: ScoreCache | None = None,
    ) -> None:
        self.settings = settings
        self.consumer = build_consumer(settings)
        self.producer = build_producer(settings)
        self.checkpoint = Checkpoint(self.consumer, metrics, settings.shutdown_grace_s)
        self.publisher = Publisher(
            self.producer,
            output_topic=settings.output_topic,
            dlq_topic=settings.dlq_topic,
            checkpoint=self.checkpoint,
            metrics=metrics,
            on_fatal=on_fatal,
            tracing=tracing,
            score_cache=score_cache,
        )
        self.consume_loop = ConsumeLoop(
            self.consumer,
            self.checkpoint,
            tokenizer,
            tokenizer_thread,
            queue,
            self.publisher,
            metrics,
            IntakeLimits(
                settings.max_in_flight,
                settings.max_poll_records,
                settings.max_text_bytes,
                settings.max_in_flight_bytes,
                settings.max_metadata_bytes,
            ),
            tracing,
            detector=detector,
            served_languages=served_languages,
            policies=policies,
        )

    async def connect(self) -> None:
        """Start the producer and the consumer; `KafkaError` when the brokers cannot be reached."""
        await self.producer.start()
        await self.consumer.start()

    def subscribe(self, on_joined: Callable[[set[TopicPartition]], None]) -> None:
        """Join the group on the input topic; `on_joined` is called on every assignment."""
        settings = self.settings
        log.info("joining group %s on topic %s ...", settings.group_id, settings.input_topic)
        self.consumer.subscribe(
            [settings.input_topic], listener=CheckpointListener(self.checkpoint, on_joined)
        )

    def start_tasks(self) -> dict[str, asyncio.Task[None]]:
        """The consume loop and the periodic commit, by name."""
        interval_s = self.settings.commit_interval_ms / 1000
        return {
            "consume": asyncio.create_task(self.consume_loop.run(), name="consume"),
            "commit": asyncio.create_task(
                self.checkpoint.commit_periodically(interval_s), name="commit"
            ),
        }

    def stop_fetching(self) -> None:
        """The drain began: fetch nothing more (the records of the last fetch are still queued)."""
        self.consume_loop.stop()

    async def finish(self, deadline: float) -> bool:
        """After the inference loop drained: publish what it handed over and wait until every
        record is acknowledged, until `deadline` (event loop time). Whether all were."""
        loop = asyncio.get_running_loop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout_at(deadline):
                await self.publisher.flush()
        return await self.checkpoint.wait_drained(None, max(0.0, deadline - loop.time()))

    async def final_commit(self, timeout_s: float) -> None:
        """Commit the acknowledged offsets (safe even after a fatal error), bounded."""
        try:
            async with asyncio.timeout(timeout_s):
                await self.checkpoint.commit()
        except TimeoutError:  # a broker gone quiet cannot hold the exit
            log.warning("the final commit did not finish: records since the last one are redone")

    async def close(self, timeout_s: float) -> None:
        """Leave the group and flush the producer, each bounded: a broker gone quiet cannot
        hold the exit (so the pod is restarted)."""
        for client in (self.consumer, self.producer):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout_s):
                    await client.stop()

    def in_flight(self) -> int:
        """Records consumed and not yet acknowledged."""
        return self.checkpoint.in_flight()
