"""The front door: `serve(settings)` loads the model, then `Worker` wires the pipeline and runs it.

    Kafka ─▶ ConsumeLoop (decode, tokenize once) ─▶ BatchQueue ─▶ InferenceLoop (backend)
                 │ bad records                                        │ scores
                 ▼                                                    ▼
            dead letters ◀──────────────── Publisher ────────────▶ outputs
                                               │ acks
                                               ▼
                                          Checkpoint ─▶ commits

Delivery guarantee: at least once. An offset is committed only after the output or dead letter
of that record and of every earlier record of its partition was acknowledged by the broker
(`acks=all`). On revocation and on shutdown, in-flight work is finished and committed first.
A crash can therefore repeat the records that were in flight, never skip one.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from schemas import ThresholdPolicy
from worker.batching import BatchQueue, warm_up_shapes
from worker.checkpoint import Checkpoint, CheckpointListener
from worker.config import Settings
from worker.consume import ConsumeLoop, IntakeLimits, build_consumer
from worker.health import HealthServer
from worker.http_api import PerspectiveApi
from worker.inference import InferenceLoop
from worker.metrics import Metrics
from worker.model import ServedModel, load_from_settings
from worker.policy import PolicyHolder, PolicyWatcher, TenantSource, load_policy_file
from worker.publish import Publisher, build_producer
from worker.shadow import ShadowScorer
from worker.tracing import Tracing, tracing_from_settings

log = logging.getLogger(__name__)

SHADOW_DRAIN_S = 2.0  # at shutdown, after the primary: for the shadow queue, then its flush
TASK_CANCEL_TIMEOUT_S = 5.0  # at shutdown: for the cancelled loops to end
KAFKA_CLIENT_STOP_TIMEOUT_S = 10.0  # at shutdown, each: final commit, leave group, flush


def process_age_s() -> float:
    """Seconds since this process started (Linux /proc; elsewhere since the first call)."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _FIRST_CALL


_FIRST_CALL = time.monotonic()


@dataclass
class StartupClock:
    """Seconds spent in each start-up phase, from process start to ready."""

    phases: dict[str, float] = field(default_factory=dict)
    _last: float = field(default_factory=lambda: 0.0)

    def lap(self, phase: str) -> None:
        now = process_age_s()
        self.phases[phase] = round(now - self._last, 3)
        self._last = now


def load_and_warm_up(settings: Settings, clock: StartupClock) -> ServedModel:
    """Straight-line start-up before anything connects: load (or refuse), then run every batch
    shape once so that no request pays a kernel's first use."""
    clock.lap("imports")  # interpreter, worker package, settings
    model = load_from_settings(settings)
    for name, choice in model.runtime.describe().items():
        log.info("%s: %s", name, choice)
    clock.lap("model_load")  # includes importing the backend's libraries
    shapes = list(
        warm_up_shapes(settings.max_batch_size, settings.token_budget, settings.max_length)
    )
    model.backend.warm_up(shapes)
    # torch and transformers leave hundreds of thousands of long-lived objects behind; each full
    # collection walks them all, a pause of the event loop that shows as a latency spike
    # (docs/benchmarks.md). Frozen, they are never scanned again; what serving allocates still is.
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    clock.lap("warm_up")
    contract, backend = model.contract, model.backend
    log.info(
        "model %s (version %s) on %s, %s, %s; %d shapes warmed up; start-up so far %s",
        contract.model_name, contract.model_version, backend.device, backend.precision,
        backend.kind, len(shapes), clock.phases,
    )  # fmt: skip
    return model


class Worker:
    """One worker process: `await Worker(settings, model).run()` returns the exit code.
    Construct it inside the running event loop (the Kafka clients bind to it). `tracing`:
    OpenTelemetry hooks (default: from the settings, None unless `MODERATION_OTEL`)."""

    def __init__(
        self,
        settings: Settings,
        model: ServedModel,
        clock: StartupClock | None = None,
        *,
        shadow: ServedModel | None = None,
        policy: ThresholdPolicy | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        """`policy`: the policy file already read (else it is read here from `policy_file`;
        `PolicyError` if it is not valid for the model); `shadow`: a loaded shadow model."""
        self.settings = settings
        self.tracing = tracing if tracing is not None else tracing_from_settings(settings)
        self.model = model
        self.clock = clock or StartupClock()
        self.metrics = Metrics()
        self.metrics.init_labels(settings.input_topic)
        self.metrics.init_http_labels()  # exported at 0 even with the API off: panels stay valid
        contract, backend = model.contract, model.backend
        self.metrics.set_model(
            contract.model_name, contract.model_version, backend.device, list(contract.labels)
        )
        if policy is None and settings.policy_file is not None:
            policy = load_policy_file(settings.policy_file, contract.labels)
        self.policies = PolicyHolder(
            contract,
            policy,
            shadow=shadow.contract if shadow is not None else None,
            source=TenantSource(settings.tenant_field, settings.tenant_header),
            metrics=self.metrics,
        )
        self.policy_watcher = (
            None
            if settings.policy_file is None
            else PolicyWatcher(
                settings.policy_file, self.policies, self.metrics, settings.policy_poll_interval_s
            )
        )
        self.shadow: ShadowScorer | None = None
        self.shadow_producer = None
        if shadow is not None:
            self.shadow_producer = build_producer(settings)
            self.shadow = ShadowScorer(
                shadow, model, self.shadow_producer, settings.shadow_output_topic, self.metrics,
                settings.shadow_queue_batches,
            )  # fmt: skip
            self.metrics.set_shadow(
                shadow.contract.model_name, shadow.contract.model_version, list(contract.labels),
                settings.shadow_flip_rate_alert,
            )  # fmt: skip
        self.consumer = build_consumer(settings)
        self.producer = build_producer(settings)
        self.checkpoint = Checkpoint(self.consumer, self.metrics, settings.shutdown_grace_s)
        self.publisher = Publisher(
            self.producer,
            output_topic=settings.output_topic,
            dlq_topic=settings.dlq_topic,
            checkpoint=self.checkpoint,
            metrics=self.metrics,
            on_fatal=self.fail,
            tracing=self.tracing,
        )
        self.queue = BatchQueue(settings.max_batch_size, settings.max_wait_ms / 1000)
        self.inference_thread = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        self.consume_loop = ConsumeLoop(
            self.consumer,
            self.checkpoint,
            model.tokenizer,
            self.tokenizer_thread,
            self.queue,
            self.publisher,
            self.metrics,
            IntakeLimits(
                settings.max_in_flight, settings.max_poll_records, settings.max_text_bytes
            ),
            self.tracing,
        )
        self.inference_loop = InferenceLoop(
            self.queue, model, self.inference_thread, self.publisher, self.metrics,
            policies=self.policies, shadow=self.shadow, tracing=self.tracing,
        )  # fmt: skip
        self._side_tasks: dict[str, asyncio.Task[None]] = {}
        self.http = HealthServer(self.metrics, self.is_ready)
        self.api: PerspectiveApi | None = None  # the Perspective-compatible HTTP API, if asked for
        if settings.http_api_port is not None:
            self.api = PerspectiveApi(
                settings, model, self.queue, self.tokenizer_thread, self.metrics, self.serving
            )
        self.joined = False
        self.fatal: BaseException | None = None
        self.stuck: list[str] = []  # tasks that did not end when cancelled at shutdown
        self._stop_requested = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------

    def is_ready(self) -> bool:
        return self.joined and self.fatal is None and not self._stop_requested.is_set()

    def serving(self) -> bool:
        """The HTTP API's readiness: the backend loop runs (no Kafka group needed)."""
        return self.fatal is None and not self._stop_requested.is_set()

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

    def _joined(self, _: set[TopicPartition]) -> None:
        if not self.joined:
            self.clock.lap("kafka_join")
            log.info(
                "joined group %s in %.1f s", self.settings.group_id, self.clock.phases["kafka_join"]
            )
            for phase, seconds in self.clock.phases.items():
                self.metrics.startup.labels(phase).set(seconds)
            log.info("ready: start-up phases (s) %s", self.clock.phases)
        self.joined = True
        self.metrics.ready.set(1 if self.is_ready() else 0)

    async def run(self) -> int:
        settings = self.settings
        await self.http.start(settings.metrics_host, settings.metrics_port)
        log.info("HTTP endpoints on port %s", self.http.port)
        try:
            try:
                await self.producer.start()
                await self.consumer.start()
            except KafkaError as exc:
                log.error("cannot reach Kafka at %s: %r", settings.bootstrap_servers, exc)
                return 1
            self.clock.lap("kafka_connect")
            log.info("joining group %s on topic %s ...", settings.group_id, settings.input_topic)
            self.consumer.subscribe(
                [settings.input_topic], listener=CheckpointListener(self.checkpoint, self._joined)
            )
            tasks = {
                "consume": asyncio.create_task(self.consume_loop.run(), name="consume"),
                "infer": asyncio.create_task(self.inference_loop.run(), name="infer"),
                "commit": asyncio.create_task(
                    self.checkpoint.commit_periodically(settings.commit_interval_ms / 1000),
                    name="commit",
                ),
            }
            for task in tasks.values():
                task.add_done_callback(self._task_done)
            await self._start_side_tasks()
            if self.api is not None:
                await self.api.start(settings.http_api_host, settings.http_api_port or 0)
                log.info("Perspective-compatible HTTP API on port %s", self.api.port)
            await self._stop_requested.wait()
            drained = await self._drain(tasks)
            return 1 if self.fatal is not None or not drained else 0
        finally:
            self.metrics.ready.set(0)
            for client in (self.consumer, self.producer):  # a broker gone quiet cannot hold
                with contextlib.suppress(Exception):  # the exit (so the pod is restarted)
                    async with asyncio.timeout(KAFKA_CLIENT_STOP_TIMEOUT_S):
                        await client.stop()
            await self._stop_side_tasks()
            if self.api is not None:
                await self.api.stop()
            await self.http.stop()
            self.inference_thread.shutdown(wait=False, cancel_futures=True)
            self.tokenizer_thread.shutdown(wait=False, cancel_futures=True)
            if self.tracing is not None:
                self.tracing.shutdown()  # export the spans still buffered

    async def _start_side_tasks(self) -> None:
        """The policy watcher and the shadow: tasks the primary never waits on or fails with."""
        if self.policy_watcher is not None:
            self._side_tasks["policy"] = asyncio.create_task(
                self.policy_watcher.run(), name="policy"
            )
        if self.shadow is not None and self.shadow_producer is not None:
            try:
                await self.shadow_producer.start()
            except Exception as exc:
                log.error("shadow scoring off: its producer cannot start: %r", exc)
                self.metrics.shadow_failures.labels("publish").inc()
                self.shadow.close()
                return
            self._side_tasks["shadow"] = asyncio.create_task(self.shadow.run(), name="shadow")
        for task in self._side_tasks.values():
            task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task ended: %r (the primary goes on)", task.get_name(), task.exception())

    async def _stop_side_tasks(self) -> None:
        """After the primary drained: the shadow finishes what is queued (within
        SHADOW_DRAIN_S) and flushes; then both tasks are cancelled."""
        if self.policy_watcher is not None:
            self.policy_watcher.stop()
        shadow_task = self._side_tasks.get("shadow")
        if self.shadow is not None:
            self.shadow.close()
            if shadow_task is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(SHADOW_DRAIN_S):
                        await asyncio.shield(shadow_task)
                await self.shadow.flush(SHADOW_DRAIN_S)
            self.shadow.shutdown()
        for task in self._side_tasks.values():
            task.cancel()
        await asyncio.gather(*self._side_tasks.values(), return_exceptions=True)
        if self.shadow_producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(KAFKA_CLIENT_STOP_TIMEOUT_S):
                    await self.shadow_producer.stop()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)
        elif task.get_name() == "infer" and not self._stop_requested.is_set():
            self.fail(RuntimeError("the inference loop ended unexpectedly"))

    async def _drain(self, tasks: dict[str, asyncio.Task[None]]) -> bool:
        """Stop fetching; finish, publish and commit what is in flight within the grace period."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        self.consume_loop.stop()
        self.metrics.ready.set(0)
        drained = False
        if self.fatal is None:
            with contextlib.suppress(Exception):  # records of its last fetch are still queued
                async with asyncio.timeout_at(deadline):
                    await tasks["consume"]
            if self.api is not None:  # new requests: 503; queued ones are still answered
                self.api.close()
            self.queue.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout_at(deadline):
                    await tasks["infer"]
            with contextlib.suppress(Exception):
                async with asyncio.timeout_at(deadline):
                    await self.publisher.flush()
            drained = await self.checkpoint.wait_drained(None, max(0.0, deadline - loop.time()))
            if not drained:
                log.error("grace period over with %d in flight", self.checkpoint.in_flight())
        for task in tasks.values():
            task.cancel()
        _, stuck = await asyncio.wait(tasks.values(), timeout=TASK_CANCEL_TIMEOUT_S)
        self.stuck = sorted(task.get_name() for task in stuck)  # only if a cancellation is lost
        for name in self.stuck:
            log.error("task %s did not end when cancelled: exiting without it", name)
        try:  # only acknowledged offsets: safe even after a fatal error
            async with asyncio.timeout(KAFKA_CLIENT_STOP_TIMEOUT_S):
                await self.checkpoint.commit()
        except TimeoutError:  # a broker gone quiet cannot hold the exit
            log.warning("the final commit did not finish: records since the last one are redone")
        log.info("stopped (drained=%s, in flight=%d)", drained, self.checkpoint.in_flight())
        return drained


async def serve(
    settings: Settings,
    model: ServedModel,
    clock: StartupClock,
    *,
    shadow: ServedModel | None = None,
    policy: ThresholdPolicy | None = None,
    tracing: Tracing | None = None,
) -> int:
    """Run one worker until SIGTERM/SIGINT (drain) or a fatal error; returns the exit code."""
    worker = Worker(settings, model, clock, shadow=shadow, policy=policy, tracing=tracing)
    install_signal_handlers(worker)
    code = await worker.run()
    if worker.stuck:  # asyncio.run would wait for them forever as it cancels what is left
        log.error("exiting at once with code %d", code)
        logging.shutdown()
        os._exit(code)
    return code


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
