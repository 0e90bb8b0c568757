"""The running worker: `worker.cli.run_worker` loads what is served (`load_and_warm_up`, the
policy, the shadow, tracing), then `serve` runs a `Worker`, which wires the pipeline and its
optional parts (`worker.lifecycle.Feature`) and runs them until a stop or a fatal error.

    Kafka ─▶ ConsumeLoop (decode, tokenize once) ─▶ BatchQueue ─▶ InferenceLoop (backend)
                 │ bad records                            ▲           │ scores
                 ▼                       HTTP API requests┘           ▼
            dead letters ◀──────────────── Publisher ────────────▶ outputs
                                               │ acks
                                               ▼
                                          Checkpoint ─▶ commits

The Kafka side (consumer, producer, checkpoint, publisher, consume loop, commits) is one part,
`worker.pipeline.kafka_intake.KafkaIntake`; with `MODERATION_HTTP_ONLY` it is absent (no Kafka
client is built) and the worker serves the HTTP API alone, through the same queue and loop.

Live quality (`worker.quality`): what is published is remembered per comment id (a bounded
LRU), and moderators' decisions are counted per tenant x label: with Kafka read from the feedback
topic by a `Feature` in a consumer group of its own, HTTP only as suggestscore stores them.

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

from schemas import ModelRef, ThresholdPolicy
from worker.backends.model import ServedModel, load_from_settings
from worker.config import Settings
from worker.http.api import PerspectiveApi
from worker.http.feedback_sink import feedback_sink
from worker.http.health import HealthServer
from worker.lifecycle import Feature, ShutdownTimeouts
from worker.metrics import Metrics
from worker.pipeline.batching import BatchQueue, warm_up_shapes
from worker.pipeline.inference import InferenceLoop
from worker.pipeline.kafka_clients import build_producer
from worker.pipeline.kafka_intake import KafkaIntake
from worker.policy import PolicyHolder, PolicyWatcher, TenantSource
from worker.quality.cache import ScoreCache
from worker.quality.consumer import FeedbackConsumer
from worker.quality.tracker import QualityTracker
from worker.shadow import ShadowScorer
from worker.tracing import Tracing

log = logging.getLogger(__name__)

# How long a thread waiting for the GIL waits before the holder is asked to let go (Python's
# default: 5 ms). The event loop, tokenizer and inference threads hand the GIL over several times
# per record; 1 ms cut p50 and p99 at half load (measured: docs/benchmarks.md). A measured
# constant, not a setting (it was MODERATION_GIL_SWITCH_INTERVAL_MS until issue 21).
GIL_SWITCH_INTERVAL_S = 0.001


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
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    clock.lap("warm_up")
    contract, backend = model.contract, model.backend
    log.info(
        "model %s (version %s) on %s, %s, %s; %d shapes warmed up; start-up so far %s",
        contract.model_name, contract.model_version, backend.device, backend.precision,
        backend.kind, len(shapes), clock.phases,
    )  # fmt: skip
    collapsed = contract.collapse_warning()
    if collapsed is not None:  # served as asked, but not silently
        log.warning(collapsed)
    return model


class Worker:
    """One worker process: `await Worker(settings, model).run()` returns the exit code.
    Construct it inside the running event loop (the Kafka clients bind to it).

    It is given what was loaded before (`worker.cli` composes it): `policy`, the policy read
    from `settings.policy_file` (required when that is set; None: the model's thresholds);
    `shadow`, a loaded shadow model; `tracing`, OpenTelemetry hooks (None: off). It loads
    nothing itself. The optional parts it wires (`self.features`) share one lifecycle
    (`worker.lifecycle.Feature`); `timeouts` bound each step of the shutdown."""

    def __init__(
        self,
        settings: Settings,
        model: ServedModel,
        clock: StartupClock | None = None,
        *,
        shadow: ServedModel | None = None,
        policy: ThresholdPolicy | None = None,
        tracing: Tracing | None = None,
        timeouts: ShutdownTimeouts | None = None,
    ) -> None:
        if settings.policy_file is not None and policy is None:
            raise ValueError("policy_file is set: pass the policy read from it (load_policy_file)")
        self.settings = settings
        self.tracing = tracing
        self.timeouts = timeouts = timeouts or ShutdownTimeouts()
        self.model = model
        self.clock = clock or StartupClock()
        self.metrics = Metrics()
        self.metrics.init_labels(settings.input_topic)
        self.metrics.init_http_labels()  # exported at 0 even with the API off: panels stay valid
        if model.language is not None:
            self.metrics.init_language_labels(model.contract.served_languages)
        contract, backend = model.contract, model.backend
        self.metrics.set_model(
            contract.model_name, contract.model_version, backend.device, list(contract.labels),
            collapsed=contract.collapsed is not None,
        )  # fmt: skip
        self.policies = PolicyHolder(
            contract,
            policy,
            shadow=shadow.contract if shadow is not None else None,
            source=TenantSource(settings.tenant_field, settings.tenant_header),
            metrics=self.metrics,
        )
        # --- live quality (worker/quality): what was published per id, decisions counted
        self.score_cache: ScoreCache | None = None
        if settings.feedback_score_cache > 0 and (
            settings.feedback_quality or settings.http_api_port is not None
        ):
            self.score_cache = ScoreCache(
                settings.feedback_score_cache,
                contract.labels,
                ModelRef(name=contract.model_name, version=contract.model_version),
            )
        self.quality: QualityTracker | None = None
        if settings.feedback_quality:
            self.quality = QualityTracker(self.policies, self.metrics, self.score_cache)
        self.queue = BatchQueue(settings.max_batch_size, settings.max_wait_ms / 1000)
        self.inference_thread = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenize")
        # --- the Kafka side: consume, publish, commit (None: HTTP only, no Kafka client built)
        self.intake: KafkaIntake | None = None
        if not settings.http_only:
            self.intake = KafkaIntake(
                settings, model.tokenizer, self.tokenizer_thread, self.queue, self.metrics,
                on_fatal=self.fail, tracing=self.tracing, detector=model.language,
                served_languages=contract.served_languages, policies=self.policies,
                score_cache=self.score_cache,
            )  # fmt: skip
        # --- the optional parts: each a `Feature`, started and stopped in this order
        self.policy_watcher: PolicyWatcher | None = None
        if settings.policy_file is not None:
            self.policy_watcher = PolicyWatcher(
                settings.policy_file,
                self.policies,
                self.metrics,
                settings.policy_poll_interval_s,
                settings.policy_max_bytes,
            )
        self.shadow: ShadowScorer | None = None
        if shadow is not None:
            if self.intake is None:  # refused earlier, at the settings (worker.config)
                raise ValueError("a shadow model publishes to Kafka: not with http_only")
            self.shadow = ShadowScorer(
                shadow, model, build_producer(settings), settings.shadow_output_topic,
                self.metrics, settings.shadow_queue_batches, timeouts,
            )  # fmt: skip
            self.metrics.set_shadow(
                shadow.contract.model_name, shadow.contract.model_version, list(contract.labels)
            )
        self.api: PerspectiveApi | None = None  # the Perspective-compatible HTTP API, if asked for
        if settings.http_api_port is not None:
            producer = self.intake.producer if self.intake is not None else None
            self.api = PerspectiveApi(
                settings, model, self.queue, self.tokenizer_thread, self.metrics, self.serving,
                policies=self.policies, feedback=feedback_sink(settings, producer),
                score_cache=self.score_cache,
                # HTTP only: stored decisions are counted here (with Kafka: by the consumer)
                quality=self.quality if self.intake is None else None,
            )  # fmt: skip
        self.feedback_consumer: FeedbackConsumer | None = None
        if self.quality is not None and self.intake is not None:
            self.feedback_consumer = FeedbackConsumer(settings, self.quality, self.metrics)
        self.features: list[Feature] = [
            f
            for f in (self.policy_watcher, self.shadow, self.api, self.feedback_consumer)
            if f is not None
        ]
        publisher = self.intake.publisher if self.intake is not None else None
        self.inference_loop = InferenceLoop(
            self.queue, model, self.inference_thread, publisher, self.metrics,
            policies=self.policies, shadow=self.shadow, tracing=self.tracing,
        )  # fmt: skip
        self.http = HealthServer(self.metrics, self.is_ready)
        self.joined = False  # the Kafka group was joined once (never, HTTP only)
        self.listening = False  # every feature started (HTTP only: ready once the API listens)
        self.fatal: BaseException | None = None
        self.stuck: list[str] = []  # tasks that did not end when cancelled at shutdown
        self._stop_requested = asyncio.Event()
        self._started: list[Feature] = []  # features whose start was called

    # --- lifecycle -------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """/readyz: once the group was joined (HTTP only: once the API listens), until a stop
        or a fatal error."""
        started = self.joined if self.intake is not None else self.listening
        return started and self.fatal is None and not self._stop_requested.is_set()

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
            self._log_ready()
        self.joined = True
        self.metrics.ready.set(1 if self.is_ready() else 0)

    def _serving_http_only(self) -> None:
        """HTTP only: every feature started, so the API listens; ready from now on."""
        assert self.api is not None  # the settings require the API with http_only
        self.listening = True
        self.clock.lap("http_listen")
        log.info("serving HTTP only on port %s (no Kafka)", self.api.port)
        self._log_ready()
        self.metrics.ready.set(1 if self.is_ready() else 0)

    def _log_ready(self) -> None:
        for phase, seconds in self.clock.phases.items():
            self.metrics.startup.labels(phase).set(seconds)
        log.info("ready: start-up phases (s) %s", self.clock.phases)

    async def run(self) -> int:
        settings = self.settings
        intake = self.intake
        await self.http.start(settings.metrics_host, settings.metrics_port)
        log.info("HTTP endpoints on port %s", self.http.port)
        try:
            if intake is not None:
                try:
                    await intake.connect()
                except KafkaError as exc:
                    log.error("cannot reach Kafka at %s: %r", settings.bootstrap_servers, exc)
                    return 1
                self.clock.lap("kafka_connect")
                intake.subscribe(self._joined)
            tasks = {"infer": asyncio.create_task(self.inference_loop.run(), name="infer")}
            if intake is not None:
                tasks |= intake.start_tasks()
            for task in tasks.values():
                task.add_done_callback(self._task_done)
            await self._start_features()
            if intake is None and self.fatal is None:
                self._serving_http_only()
            await self._stop_requested.wait()
            drained = await self._drain(tasks)
            return 1 if self.fatal is not None or not drained else 0
        finally:
            self.metrics.ready.set(0)
            if intake is not None:
                await intake.close(self.timeouts.kafka_client_stop_s)
            await self._stop_features()
            await self.http.stop()
            self.inference_thread.shutdown(wait=False, cancel_futures=True)
            self.tokenizer_thread.shutdown(wait=False, cancel_futures=True)
            if self.tracing is not None:
                self.tracing.shutdown()  # export the spans still buffered

    async def _start_features(self) -> None:
        """After the primary started; a feature that cannot start stops the worker (exit 1)."""
        for feature in self.features:
            self._started.append(feature)
            try:
                await feature.start()
            except Exception as exc:
                self.fail(RuntimeError(f"{feature.name} cannot start: {exc!r}"))
                return

    async def _stop_features(self) -> None:
        """After the primary drained, in the order they were started; each bounds its own
        waits (the shadow: `timeouts.shadow_drain_s` for its queue, then for its flush)."""
        for feature in self._started:
            try:
                await feature.stop()
            except Exception as exc:
                log.error("%s did not stop cleanly: %r", feature.name, exc)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.fail(exc)
        elif task.get_name() == "infer" and not self._stop_requested.is_set():
            self.fail(RuntimeError("the inference loop ended unexpectedly"))

    async def _drain(self, tasks: dict[str, asyncio.Task[None]]) -> bool:
        """Stop taking work; finish (and with Kafka publish and commit) what is in flight within
        the grace period. Whether everything in flight was finished."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_s
        intake = self.intake
        if intake is not None:
            intake.stop_fetching()
        self.metrics.ready.set(0)
        drained = False
        if self.fatal is None:
            if intake is not None:
                with contextlib.suppress(Exception):  # records of its last fetch are still queued
                    async with asyncio.timeout_at(deadline):
                        await tasks["consume"]
            for feature in self.features:  # e.g. the API: new requests 503, queued answered
                feature.close()
            self.queue.close()
            infer = tasks["infer"]
            with contextlib.suppress(Exception):
                async with asyncio.timeout_at(deadline):
                    await infer
            if intake is not None:
                drained = await intake.finish(deadline)
            else:  # HTTP only: every queued text was answered
                drained = infer.done() and not infer.cancelled() and infer.exception() is None
            if not drained:
                log.error("grace period over with %d in flight", self._in_flight())
        for task in tasks.values():
            task.cancel()
        _, stuck = await asyncio.wait(tasks.values(), timeout=self.timeouts.task_cancel_s)
        self.stuck = sorted(task.get_name() for task in stuck)  # only if a cancellation is lost
        for name in self.stuck:
            log.error("task %s did not end when cancelled: exiting without it", name)
        if intake is not None:
            await intake.final_commit(self.timeouts.kafka_client_stop_s)
        log.info("stopped (drained=%s, in flight=%d)", drained, self._in_flight())
        return drained

    def _in_flight(self) -> int:
        """Kafka records not yet acknowledged; HTTP only: texts still queued."""
        return self.intake.in_flight() if self.intake is not None else len(self.queue)


async def serve(
    settings: Settings,
    model: ServedModel,
    clock: StartupClock,
    *,
    shadow: ServedModel | None = None,
    policy: ThresholdPolicy | None = None,
    tracing: Tracing | None = None,
) -> int:
    """Run one worker until SIGTERM/SIGINT (drain) or a fatal error; returns the exit code.
    What it serves is loaded by the caller (`worker.cli`); see `Worker`."""
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
