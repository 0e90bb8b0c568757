"""The front door: wires consumer, batcher, model, publisher, committer and HTTP together.

Delivery guarantee: at least once. An offset is committed only after the output or dead letter
of that record and of every earlier record of its partition was acknowledged by the broker
(`acks=all`). On revocation and on shutdown, in-flight work is finished and committed first.
A crash can therefore repeat the records that were in flight, never skip one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from worker.batching import BatchPolicy, MicroBatcher
from worker.config import Settings
from worker.consume import ConsumeLoop, RebalanceListener, build_consumer
from worker.health import HealthServer
from worker.infer import Scorer, configure_torch
from worker.metrics import Metrics
from worker.offsets import OffsetTracker
from worker.publish import Publisher, build_producer
from worker.records import InFlight
from worker.scoring import BatchScorer

log = logging.getLogger(__name__)

LAG_POSITION_TIMEOUT_S = 0.05


class Worker:
    """One worker process: `await Worker(settings).run()` returns the process exit code."""

    def __init__(self, settings: Settings, scorer: Scorer | None = None) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.metrics.init_labels(settings.input_topic)
        self.tracker = OffsetTracker()
        self.scorer = scorer
        self.http = HealthServer(self.metrics, self.is_ready)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.tokenize_executor: ThreadPoolExecutor | None = None  # with OVERLAP_TOKENIZATION
        self.batcher: MicroBatcher[InFlight] = MicroBatcher(
            BatchPolicy(settings.max_batch_size, settings.max_wait_ms / 1000)
        )
        self.consumer: AIOKafkaConsumer | None = None
        self.producer: AIOKafkaProducer | None = None
        self.consume_loop: ConsumeLoop | None = None
        self.joined = False
        self.fatal: BaseException | None = None
        self._stop_requested = asyncio.Event()
        self._commit_lock = asyncio.Lock()

    # --- lifecycle -------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self.scorer is not None and self.joined and self.fatal is None

    def request_stop(self) -> None:
        """Stop fetching, drain, commit and exit (SIGTERM/SIGINT)."""
        if not self._stop_requested.is_set():
            log.info("stop requested: draining in-flight work")
        self._stop_requested.set()

    def fail(self, exc: BaseException) -> None:
        """A fatal error: stop without acknowledging anything more; exit non-zero."""
        if self.fatal is None:
            self.fatal = exc
            log.error("fatal error, stopping: %r", exc)
        self._stop_requested.set()

    async def run(self) -> int:
        settings = self.settings
        configure_torch(settings.torch_threads, settings.torch_interop_threads)
        await self.http.start(settings.metrics_host, settings.metrics_port)
        log.info("HTTP endpoints on port %s", self.http.port)
        try:
            return await self._run_pipeline()
        finally:
            self.metrics.ready.set(0)
            await self.http.stop()
            self.executor.shutdown(wait=False, cancel_futures=True)
            if self.tokenize_executor is not None:
                self.tokenize_executor.shutdown(wait=False, cancel_futures=True)

    async def _run_pipeline(self) -> int:
        settings = self.settings
        loop = asyncio.get_running_loop()
        if self.scorer is None:
            self.scorer = await loop.run_in_executor(
                self.executor,
                functools.partial(
                    Scorer.load,
                    settings.model,
                    settings.device,
                    settings.max_length,
                    precision=settings.precision,
                    token_budget=settings.token_budget,
                ),
            )
        scorer = self.scorer
        started = loop.time()
        shapes = await loop.run_in_executor(self.executor, scorer.warm_up, settings.max_batch_size)
        log.info("warmed up %d batch shapes in %.1f s", shapes, loop.time() - started)
        self.metrics.set_model(scorer.name, scorer.version, str(scorer.device), scorer.labels)
        log.info(
            "model %s (version %s) on %s, labels %s",
            scorer.name, scorer.version, scorer.device, scorer.labels,
        )  # fmt: skip

        self.producer = build_producer(settings)
        self.consumer = build_consumer(settings)
        publisher = Publisher(self.producer, settings, self.tracker, self.metrics, self.fail)
        self.consume_loop = ConsumeLoop(
            self.consumer, settings, self.tracker, self.batcher, publisher, self.metrics
        )
        if settings.overlap_tokenization:
            self.tokenize_executor = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        batch_scorer = BatchScorer(
            self.batcher, scorer, self.executor, publisher, self.metrics, self.tokenize_executor
        )
        try:
            try:
                await self.producer.start()
                await self.consumer.start()
            except KafkaError as exc:
                log.error("cannot reach Kafka at %s: %r", settings.bootstrap_servers, exc)
                return 1
            self.consumer.subscribe(
                [settings.input_topic],
                listener=RebalanceListener(self._release_partitions, self._partitions_assigned),
            )
            tasks = {
                "consume": asyncio.create_task(self.consume_loop.run(), name="consume"),
                "score": asyncio.create_task(batch_scorer.run(), name="score"),
                "commit": asyncio.create_task(self._commit_periodically(), name="commit"),
            }
            for task in tasks.values():
                task.add_done_callback(self._task_done)
            await self._stop_requested.wait()
            drained = await self._drain(tasks, publisher)
        finally:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
            with contextlib.suppress(Exception):
                await self.producer.stop()
        if self.fatal is not None:
            return 1
        return 0 if drained else 1

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)
        elif task.get_name() == "score" and not self._stop_requested.is_set():
            self.fail(RuntimeError("the scoring loop ended unexpectedly"))

    async def _drain(self, tasks: dict[str, asyncio.Task[None]], publisher: Publisher) -> bool:
        """Stop fetching; finish, publish and commit what is in flight within the grace period."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        assert self.consume_loop is not None
        self.consume_loop.stop()
        self.metrics.ready.set(0)
        drained = False
        if self.fatal is None:
            with contextlib.suppress(Exception):  # records of its last fetch are still dispatched
                await asyncio.wait_for(tasks["consume"], deadline - loop.time())
            self.batcher.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tasks["score"], max(0.0, deadline - loop.time()))
            with contextlib.suppress(Exception):
                await asyncio.wait_for(publisher.flush(), max(0.0, deadline - loop.time()))
            drained = await self.tracker.wait_drained(None, max(0.0, deadline - loop.time()))
            if not drained:
                log.error("grace period over with %d messages in flight", self.tracker.in_flight())
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await self.commit()  # only acknowledged offsets: safe even after a fatal error
        log.info("stopped (drained=%s, in flight=%d)", drained, self.tracker.in_flight())
        return drained

    # --- offsets and rebalancing -----------------------------------------------------------

    async def commit(self, tps: set[TopicPartition] | None = None) -> None:
        """Commit the acknowledged prefix of each partition (all partitions when `tps` is None)."""
        assert self.consumer is not None
        async with self._commit_lock:
            assigned = self.consumer.assignment()
            offsets = {tp: o for tp, o in self.tracker.committable(tps).items() if tp in assigned}
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except (KafkaError, AssertionError) as exc:
                self.metrics.errors.labels("commit").inc()
                log.warning("commit of %d partitions failed: %r", len(offsets), exc)
                return
            self.tracker.mark_committed(offsets)
            self.metrics.commits.inc()

    async def _commit_periodically(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self.commit()
            await self._update_lag()

    async def _update_lag(self) -> None:
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                continue
            position = self.tracker.next_offset(tp)
            if position is None:
                try:
                    position = await asyncio.wait_for(
                        self.consumer.position(tp), LAG_POSITION_TIMEOUT_S
                    )
                except (TimeoutError, KafkaError):
                    continue
            self.metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - position))

    async def _release_partitions(self, revoked: set[TopicPartition]) -> None:
        """Rebalance listener: finish and commit in-flight work before giving partitions up."""
        if not revoked:
            return
        in_flight = self.tracker.in_flight(revoked)
        if in_flight:
            log.info("revoked %d partitions: draining %d messages", len(revoked), in_flight)
            if not await self.tracker.wait_drained(revoked, self.settings.shutdown_grace_s):
                log.warning("revoked partitions still had work in flight; it will be redone")
        await self.commit(revoked)
        self.tracker.forget(revoked)
        for tp in revoked:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(tp.topic, str(tp.partition))

    def _partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
        self.joined = True
        self.metrics.ready.set(1 if self.is_ready() else 0)


def install_signal_handlers(worker: Worker) -> None:
    """SIGTERM/SIGINT drain and exit; a second signal exits at once."""
    loop = asyncio.get_running_loop()
    received = 0

    def handler(signum: int) -> None:
        nonlocal received
        received += 1
        if received > 1:
            log.error("second %s: exiting without draining", signal.Signals(signum).name)
            raise SystemExit(1)
        worker.request_stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handler, signum)
