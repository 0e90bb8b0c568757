"""Fault-injection scenarios, parameterised: small in `make test`, full in `make reliability`.

Each returns a dict of figures (JSON-friendly) and raises AssertionError when the promise broke:
every produced id has an output or a dead letter, no output for an id never produced, duplicates
only from what was uncommitted at a crash.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from testing.broker import TansuBroker
from testing.kafka import committed_offsets, produce_paced
from testing.reliability.harness import (
    Ledger,
    Restart,
    WorkerSupervisor,
    collect,
    message,
    placed_from,
    produce_batched,
    snapshot,
    uncommitted_window,
)
from testing.topics import Topics, fresh_topics
from testing.wait import Message, wait_until

MiB = 1_048_576


def promised(
    predicate: Callable[[], object], timeout: float, message: Message, interval: float = 0.05
) -> None:
    """`wait_until`, a timeout being a broken promise (AssertionError), not an error."""
    try:
        wait_until(predicate, timeout, interval=interval, message=message)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def supervisor(
    bootstrap: str, names: Topics, model: str | None, workdir: Path, env: dict[str, str]
) -> WorkerSupervisor:
    return WorkerSupervisor(bootstrap, names, model, workdir, dict(env))


class Producer(threading.Thread):
    """Produces `count` messages at `rate` in the background, remembering where each landed."""

    def __init__(self, bootstrap: str, topic: str, ids: range, prefix: str, rate: float | None):
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, ids, prefix, rate)
        self.placed: dict[str, tuple[int, int]] = {}
        self.stop = threading.Event()
        self.result: tuple[int, float] | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        bootstrap, topic, ids, prefix, rate = self.args
        messages = (message(i, prefix) for i in ids)
        try:
            self.result = asyncio.run(
                produce_paced(bootstrap, topic, messages, rate, placed=self.placed, stop=self.stop)
            )
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float) -> tuple[int, float]:
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.result is not None, "the producer did not finish in time"
        return self.result


def _offer(conn, bootstrap: str, topic: str, count: int, prefix: str, rate: float) -> None:
    try:
        conn.send(("ok", asyncio.run(produce_batched(bootstrap, topic, count, prefix, rate))))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class LoadProcess:
    """`produce_batched` in a process of its own (spawned), so that the offered rate does not
    share an interpreter (GIL, event loop) with the harness that watches the worker."""

    def __init__(self, bootstrap: str, topic: str, count: int, prefix: str, rate: float):
        ctx = multiprocessing.get_context("spawn")
        self._result, child = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(
            target=_offer, args=(child, bootstrap, topic, count, prefix, rate), daemon=True
        )
        self.prefix = prefix

    def start(self) -> None:
        self.proc.start()

    def is_alive(self) -> bool:
        return self.proc.is_alive() and not self._result.poll()

    def finish(self, timeout: float) -> tuple[int, float, dict[str, tuple[int, int]]]:
        """(count, seconds, key -> (partition, offset)); raises if the producer failed."""
        try:
            assert self._result.poll(timeout), "the load producer did not finish in time"
            status, payload = self._result.recv()
        finally:
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
        if status != "ok":
            raise RuntimeError(f"load producer failed:\n{payload}")
        return payload["count"], payload["seconds"], placed_from(payload["placements"], self.prefix)


def recovery_figures(restarts: list[Restart]) -> dict[str, object]:
    ready = [r.ready_after_s for r in restarts if r.ready_after_s is not None]
    progress = [r.progress_after_s for r in restarts if r.progress_after_s is not None]
    return {
        "recovery_ready_s": [round(x, 2) for x in ready],
        "recovery_progress_s": [round(x, 2) for x in progress],
        "recovery_ready_max_s": round(max(ready), 2) if ready else None,
        "recovery_progress_max_s": round(max(progress), 2) if progress else None,
    }


def check(ledger: Ledger, figures: dict[str, object]) -> None:
    lost, unexpected = sorted(ledger.lost)[:5], sorted(ledger.unexpected)[:5]
    assert not ledger.lost, f"{len(ledger.lost)} ids lost, e.g. {lost}: {figures}"
    assert not ledger.unexpected, f"outputs for ids never produced: {unexpected}: {figures}"


# --- kill -9 -----------------------------------------------------------------------------


def kill9(
    bootstrap: str,
    workdir: Path,
    *,
    messages: int,
    kills: int,
    model: str | None,
    env: dict[str, str],
    seed: int = 0,
    gap_s: tuple[float, float] = (0.5, 3.0),
) -> dict[str, object]:
    """kill -9 the worker `kills` times at random moments while traffic flows; restart it."""
    names = fresh_topics(bootstrap, "kill9")
    sup = supervisor(bootstrap, names, model, workdir, env)
    rng = random.Random(seed)
    # spread production over the whole crash phase (about 10 s a crash with a 6 s session)
    rate = max(200.0, messages / (kills * 9.0))
    producer = Producer(bootstrap, names.input, range(messages), "k", rate)
    windows: list[int] = []
    snaps = []
    try:
        sup.start()
        sup.wait_ready()
        producer.start()
        for _ in range(kills):
            sup.wait_progress(30)
            time.sleep(rng.uniform(*gap_s))
            crash = sup.kill9()
            crashed_at = time.time()
            time.sleep(0.3)
            snaps.append(asyncio.run(snapshot(bootstrap, names.group, names.input, crashed_at)))
            sup.restart_after(crash, progress=producer.is_alive(), timeout=60)
        produced, _ = producer.finish(timeout=messages / rate + 120)
        collected = asyncio.run(
            collect(bootstrap, names.output, names.dlq, set(producer.placed), timeout=300)
        )
        code, _ = sup.terminate()
    finally:
        producer.stop.set()
        sup.close()
    ledger = Ledger(frozenset(producer.placed), collected)
    windows = [uncommitted_window(s, collected, producer.placed) for s in snaps]
    figures = {
        "scenario": "kill -9",
        "messages": produced,
        "crashes": len(sup.restarts),
        **ledger.summary(),
        "uncommitted_at_crash": windows,
        "duplicates_bound": sum(windows),
        "peak_rss_mib": round(sup.peak_rss / MiB, 1),
        **recovery_figures(sup.restarts),
        "final_exit_code": code,
    }
    check(ledger, figures)
    assert ledger.duplicates <= sum(windows), figures
    assert code == 0, figures
    return figures


# --- broker frozen -----------------------------------------------------------------------


def broker_freeze(
    workdir: Path,
    *,
    messages: int,
    freeze_s: float,
    model: str | None,
    env: dict[str, str],
    recover_timeout_s: float = 180,
) -> dict[str, object]:
    """SIGSTOP the broker mid-stream for `freeze_s`, SIGCONT it; the worker recovers by itself
    or exits non-zero and is restarted (as its supervisor would); nothing is lost."""
    workdir.mkdir(parents=True, exist_ok=True)
    broker = TansuBroker(workdir / "frozen-broker.log")
    try:
        bootstrap = broker.bootstrap
        names = fresh_topics(bootstrap, "freeze")
        sup = supervisor(bootstrap, names, model, workdir, env)
        half = messages // 2
        before = Producer(bootstrap, names.input, range(half), "f", None)
        before.start()
        before.finish(timeout=300)
        try:
            sup.start()
            sup.wait_ready()
            assert sup.wait_progress(60)
            broker.freeze()
            frozen_at = time.monotonic()
            exits: list[int] = []
            while time.monotonic() - frozen_at < freeze_s:
                time.sleep(0.2)
            broker.thaw()
            thawed_at = time.monotonic()
            base = sup.acknowledged() if sup.alive() else None

            def recovered() -> bool:
                nonlocal base
                if not sup.alive():  # exited for its supervisor: restart it
                    assert sup.proc is not None
                    exits.append(sup.proc.returncode)
                    sup.restarts.append(Restart(f"exit {sup.proc.returncode}", time.monotonic()))
                    sup.start()
                    base = None
                now = sup.acknowledged()
                # a worker stopping after a fatal error still acknowledges what it flushes
                return now is not None and now > (base or 0) and sup.ready()

            promised(recovered, recover_timeout_s, "no progress after SIGCONT", interval=0.2)
            recovered_s = time.monotonic() - thawed_at
            after = Producer(bootstrap, names.input, range(half, messages), "f", None)
            after.start()
            after.finish(timeout=300)
            placed = before.placed | after.placed
            collected = asyncio.run(
                collect(bootstrap, names.output, names.dlq, set(placed), timeout=300)
            )
            code, _ = sup.terminate()
        finally:
            sup.close()
    finally:
        broker.close()
    ledger = Ledger(frozenset(placed), collected)
    figures = {
        "scenario": "broker SIGSTOP/SIGCONT",
        "messages": len(placed),
        "freeze_s": freeze_s,
        "worker_exits_during_freeze": exits,
        "behaviour": "exited non-zero, resumed on restart" if exits else "recovered by itself",
        "recovered_after_thaw_s": round(recovered_s, 2),
        **ledger.summary(),
        "peak_rss_mib": round(sup.peak_rss / MiB, 1),
        "final_exit_code": code,
    }
    check(ledger, figures)
    assert all(e != 0 for e in exits), figures
    assert code == 0, figures
    return figures


# --- overload ----------------------------------------------------------------------------


def overload(
    bootstrap: str,
    workdir: Path,
    *,
    factor: float,
    duration_s: float,
    model: str | None,
    env: dict[str, str],
    rss_headroom_mib: float,
    calibration_messages: int = 3000,
    aim: float = 1.03,
) -> dict[str, object]:
    """Measure the sustainable rate, then offer `factor` x that for `duration_s`: resident
    memory stays under (RSS when ready + `rss_headroom_mib`); lag grows, then drains.

    The load comes from a separate process (`LoadProcess`) paced at `aim` x `factor` x the
    sustainable rate (3 % above, because the offered rate is measured up to the last
    acknowledgement); it fails if the measured offered rate is below `factor` x sustainable."""
    names = fresh_topics(bootstrap, "overload")
    sup = supervisor(bootstrap, names, model, workdir, env)
    calib = Producer(bootstrap, names.input, range(calibration_messages), "c", None)
    calib.start()
    calib.finish(timeout=300)
    try:
        sup.start()
        sup.wait_ready()
        ready_rss = sup.ready_rss[-1]
        first: tuple[float, float] | None = None  # when the first records were acknowledged

        def calibrated() -> bool:
            nonlocal first
            acknowledged = sup.acknowledged() or 0
            if acknowledged >= calibration_messages:
                return True
            if first is None and acknowledged > 0:
                first = (time.monotonic(), acknowledged)
            return False

        promised(calibrated, 300, "calibration did not finish")
        assert first is not None
        sustainable = (calibration_messages - first[1]) / max(0.05, time.monotonic() - first[0])
        target = aim * factor * sustainable
        load = LoadProcess(bootstrap, names.input, int(target * duration_s), "o", target)
        load.start()
        peak_lag, lag_samples = 0.0, []
        load_started = time.monotonic()
        while load.is_alive():
            lag = sup.metric("moderation_consumer_lag") or 0.0
            peak_lag = max(peak_lag, lag)
            lag_samples.append((round(time.monotonic() - load_started, 1), lag))
            time.sleep(0.5)
        produced, took, load_placed = load.finish(timeout=60 + 2 * duration_s)
        load_ended = time.monotonic()
        placed = calib.placed | load_placed
        collected = asyncio.run(
            collect(
                bootstrap,
                names.output,
                names.dlq,
                set(placed),
                timeout=120 + 3 * len(placed) / sustainable,
                settle=0.5,
            )
        )
        drained_s = time.monotonic() - load_ended
        time.sleep(0.5)
        final_lag = sup.metric("moderation_consumer_lag")
        code, _ = sup.terminate()
    finally:
        sup.close()
    ledger = Ledger(frozenset(placed), collected)
    bound = ready_rss + rss_headroom_mib * MiB
    offered = produced / took
    figures = {
        "scenario": "overload",
        "sustainable_rate_per_s": round(sustainable),
        "offered_rate_per_s": round(offered),
        "offered_factor": round(offered / sustainable, 2),
        "required_factor": factor,
        "duration_s": round(took, 1),
        "offered_messages": produced,
        "messages": len(placed),
        **ledger.summary(),
        "peak_lag": peak_lag,
        "final_lag": final_lag,
        "drained_after_load_s": round(drained_s, 1),
        "ready_rss_mib": round(ready_rss / MiB, 1),
        "peak_rss_mib": round(sup.peak_rss / MiB, 1),
        "rss_bound_mib": round(bound / MiB, 1),
        "final_exit_code": code,
    }
    assert offered >= factor * sustainable, (
        f"the load producer offered {offered:.0f} msg/s = {offered / sustainable:.2f} x the "
        f"sustainable {sustainable:.0f} msg/s, below the {factor} x required: {figures}"
    )
    check(ledger, figures)
    assert sup.peak_rss <= bound, figures
    assert peak_lag > 0 and final_lag == 0, figures
    assert code == 0, figures
    return figures


# --- SIGTERM under load ------------------------------------------------------------------


def sigterm(
    bootstrap: str, workdir: Path, *, messages: int, model: str | None, env: dict[str, str]
) -> dict[str, object]:
    """SIGTERM mid-stream: exit 0 within the grace period; committed offsets = outputs."""
    names = fresh_topics(bootstrap, "sigterm")
    sup = supervisor(bootstrap, names, model, workdir, env)
    load = Producer(bootstrap, names.input, range(messages), "t", None)
    load.start()
    load.finish(timeout=600)
    try:
        sup.start()
        sup.wait_ready()
        promised(lambda: (sup.acknowledged() or 0) >= messages // 10, 300, "no progress")
        code, stop_s = sup.terminate(timeout=120)
    finally:
        sup.close()
    grace = float(env.get("MODERATION_SHUTDOWN_GRACE_S", "25"))
    committed = asyncio.run(committed_offsets(bootstrap, names.group, names.input))
    done = sum(c or 0 for c in committed.values())
    # everything published so far: read the whole output and dead-letter topics
    collected = asyncio.run(
        collect(bootstrap, names.output, names.dlq, set(), timeout=5, settle=3.0)
    )
    published = sum(collected.outputs.values()) + sum(collected.dead.values())
    figures = {
        "scenario": "SIGTERM under load",
        "messages": messages,
        "exit_code": code,
        "stop_s": round(stop_s, 2),
        "grace_s": grace,
        "committed": done,
        "published": published,
        "unique_published": len(set(collected.outputs) | set(collected.dead)),
    }
    assert code == 0 and stop_s < grace, figures
    assert done == published == figures["unique_published"], figures
    assert 0 < done < messages, "stopped mid-stream"
    return figures


# --- a second worker joins, then leaves ----------------------------------------------------


def join_leave(
    bootstrap: str, workdir: Path, *, messages: int, model: str | None, env: dict[str, str]
) -> dict[str, object]:
    names = fresh_topics(bootstrap, "rebalance", partitions=6)
    first = supervisor(bootstrap, names, model, workdir / "a", env)
    second = supervisor(bootstrap, names, model, workdir / "b", env)
    rate = max(500.0, messages / 40)
    load = Producer(bootstrap, names.input, range(messages), "r", rate)
    try:
        first.start()
        first.wait_ready()
        load.start()
        time.sleep(8)
        second.start()  # joins mid-stream
        second.wait_ready()
        second.wait_progress(60)
        time.sleep(5)
        code_second, _ = second.terminate()  # leaves mid-stream
        load.finish(timeout=messages / rate + 120)
        collected = asyncio.run(
            collect(bootstrap, names.output, names.dlq, set(load.placed), timeout=300)
        )
        code_first, _ = first.terminate()
    finally:
        load.stop.set()
        first.close()
        second.close()
    ledger = Ledger(frozenset(load.placed), collected)
    in_flight = int(env.get("MODERATION_MAX_IN_FLIGHT", "2048"))
    figures = {
        "scenario": "second worker joins and leaves",
        "messages": len(load.placed),
        **ledger.summary(),
        "duplicates_bound": 2 * in_flight,
        "exit_codes": [code_second, code_first],
    }
    check(ledger, figures)
    assert ledger.duplicates <= 2 * in_flight, figures
    assert code_first == 0 and code_second == 0, figures
    return figures
