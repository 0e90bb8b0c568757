"""Backend `auto` on a CPU: measured at the first start, remembered per machine and artifact,
measured again when the key changes or the cache is broken, never a crash; an explicit backend
wins over anything remembered."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.onnx_export import export_onnx
from worker.backends.autoselect import measure_shapes, select_backend, time_backends
from worker.backends.backend import Backend, ModelLoadError, TokenBatch
from worker.backends.choice_cache import Measured, cache_file, cache_key, read_choice
from worker.backends.hardware import Choice, CpuInfo
from worker.backends.model import ServedModel, load_served_model, plan_served_model
from worker.backends.runtime import Candidate, Runtime

CPU = CpuInfo("Test CPU", frozenset({"avx2"}))
SHAPES = [(64, 32), (32, 64)]
BUDGET_S = 0.3  # the tests time three backends on a tiny model: keep them short


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedBackend(Backend):
    """Costs `seconds_per_token` of the fake clock per padded token it scores."""

    kind, device, precision, labels = "fake", "cpu", "fp32", ("a",)

    def __init__(self, clock: FakeClock, seconds_per_token: float) -> None:
        self.clock, self.cost, self.calls = clock, seconds_per_token, 0

    def warm_up(self, shapes: Iterable[tuple[int, int]]) -> None:
        pass

    def infer(self, batch: TokenBatch) -> np.ndarray:
        self.calls += 1
        self.clock.now += self.cost * batch.input_ids.size
        return np.zeros((len(batch), 1), dtype=np.float32)


def test_timing_picks_the_fastest_and_stays_within_the_budget() -> None:
    clock = FakeClock()
    slow, fast = TimedBackend(clock, 2e-6), TimedBackend(clock, 1e-6)
    figures = time_backends({"slow": slow, "fast": fast}, SHAPES, budget_s=2.0, clock=clock)
    assert max(figures, key=figures.__getitem__) == "fast"
    assert figures["fast"] == pytest.approx(1e6) and figures["slow"] == pytest.approx(5e5)
    assert clock.now <= 2.0
    assert slow.calls == fast.calls > 2 * len(SHAPES)  # the untimed first use, then rounds


def test_rates_follow_the_work_clock_and_the_budget_the_wall_clock() -> None:
    """On a shared machine the wall clock runs on while the backend waits for a CPU: the rate
    is per unit of `work_clock`, the budget is wall time."""
    wall, work = FakeClock(), FakeClock()

    class Contended(TimedBackend):
        def infer(self, batch: TokenBatch) -> np.ndarray:
            work.now += self.cost * batch.input_ids.size
            wall.now += 3 * self.cost * batch.input_ids.size  # two thirds waiting for a CPU
            return np.zeros((len(batch), 1), dtype=np.float32)

    figures = time_backends(
        {"b": Contended(wall, 1e-6)}, SHAPES, budget_s=1.0, clock=wall, work_clock=work
    )
    assert figures["b"] == pytest.approx(1e6)
    assert wall.now <= 1.0


def test_timing_runs_one_round_even_when_one_round_overruns_the_budget() -> None:
    clock = FakeClock()
    figures = time_backends({"only": TimedBackend(clock, 1.0)}, SHAPES, budget_s=0.1, clock=clock)
    assert figures["only"] == pytest.approx(1.0)


def test_measure_shapes_are_the_fullest_pass_of_each_length() -> None:
    assert measure_shapes(256, 2048, 128) == [(16, 128), (21, 96), (32, 64), (64, 32)]
    assert measure_shapes(8, 2048, 64) == [(8, 32), (8, 64)]


def test_a_candidate_that_fails_to_load_is_left_out_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runtime = Runtime(
        Choice("auto", ""), Choice("cpu", ""), Choice("auto", ""), Choice(1, ""), CPU,
        candidates=(Candidate("torch", Choice("fp32", "")), Candidate("onnx", Choice("int8", ""))),
    )  # fmt: skip
    clock = FakeClock()

    def load(candidate: Candidate) -> Backend:
        if candidate.backend == "onnx":
            raise ModelLoadError("model.int8.onnx cannot be loaded by onnxruntime: broken")
        return TimedBackend(clock, 1e-6)

    with caplog.at_level(logging.WARNING):
        selection = select_backend(runtime, load, SHAPES, budget_s=0.01)
    assert selection.runtime.backend.value == "torch"
    assert "onnx int8 cannot be loaded, left out" in caplog.text
    with pytest.raises(ModelLoadError, match="broken"):
        select_backend(
            Runtime(
                runtime.backend,
                runtime.device,
                runtime.precision,
                runtime.threads,
                CPU,
                candidates=runtime.candidates[1:],
            ),
            load,
            SHAPES,
        )


# --- the cache, with the real backends ---------------------------------------------------------


@pytest.fixture(scope="module")
def artifact(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with its fp32 graph: torch, onnx and openvino are all candidates."""
    target = tmp_path_factory.mktemp("choice") / "model"
    shutil.copytree(tiny_model_dir, target)
    export_onnx(target)
    return target


def load(artifact: Path, cache_dir: Path, **options: Any) -> ServedModel:
    settings: dict[str, Any] = {"device": "cpu", "precision": "fp32", "threads": 1} | options
    return load_served_model(
        artifact, cache_dir=cache_dir, measure_budget_s=BUDGET_S, max_batch_size=64,
        **settings,
    )  # fmt: skip


def plan(artifact: Path, cache_dir: Path, **options: Any) -> Runtime:
    settings: dict[str, Any] = {"device": "cpu", "precision": "fp32", "threads": 1} | options
    return plan_served_model(
        artifact, cache_dir=cache_dir, shapes=measure_shapes(64, 2048, 128),
        **settings,
    ).runtime  # fmt: skip


def test_first_start_measures_and_remembers_then_the_next_uses_the_choice(
    artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    before = plan(artifact, cache)
    assert before.pending and before.backend.value == "auto"
    assert [c.name for c in before.candidates] == ["torch fp32", "onnx fp32", "openvino fp32"]
    with caplog.at_level(logging.INFO):
        first = load(artifact, cache)
    chosen = first.runtime.backend.value
    assert chosen in ("torch", "onnx", "openvino") and first.backend.kind == chosen
    # one thread: rates per CPU-second, not skewed by other processes on a shared machine
    assert "backend auto: " in caplog.text and "padded tokens per CPU-second" in caplog.text
    (written,) = cache.glob("backend-choice-*.json")
    record = json.loads(written.read_text())
    assert record["backend"] == chosen
    assert set(record["tokens_per_s"]) == {"torch fp32", "onnx fp32", "openvino fp32"}
    assert record["key"]["threads"] == 1 and record["key"]["artifact_version"] == "seed-0"
    assert record["basis"] == "cpu"

    after = plan(artifact, cache)
    assert not after.pending and after.backend.value == chosen
    assert "remembered for this machine" in after.backend.reason
    assert after.measured is not None and after.measured.tokens_per_s == record["tokens_per_s"]


def test_a_remembered_choice_is_served_without_measuring(artifact: Path, tmp_path: Path) -> None:
    """A cache file naming openvino (whatever is fastest here) is obeyed: no other backend is
    loaded, the figures are the file's."""
    cache = tmp_path / "cache"
    pending = plan(artifact, cache)
    assert pending.cache_key is not None
    path = cache_file(cache, pending.cache_key)
    path.parent.mkdir(parents=True)
    figures = {"torch fp32": 1.0, "onnx fp32": 2.0, "openvino fp32": 3.0}
    path.write_text(
        json.dumps(
            {
                "key": pending.cache_key,
                "backend": "openvino",
                "precision": "fp32",
                "tokens_per_s": figures,
                "measured_at": "2026-01-01T00:00:00+00:00",
            }
        )
    )
    served = load(artifact, cache)
    assert served.backend.kind == "openvino"
    assert served.runtime.measured.tokens_per_s == figures


def test_a_changed_key_is_a_miss(artifact: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load(artifact, cache)
    assert not plan(artifact, cache).pending
    assert plan(artifact, cache, threads=2).pending  # other threads
    other = tmp_path / "other-version"
    shutil.copytree(artifact, other)
    config = json.loads((other / "config.json").read_text())
    config["model_version"] = "seed-0-retrained"
    (other / "config.json").write_text(json.dumps(config))
    assert plan(other, cache).pending  # another artifact version
    key = cache_key(CPU, 1, "v1", ["torch fp32 2"], SHAPES)
    assert cache_file(cache, key) != cache_file(
        cache, cache_key(CPU, 1, "v1", ["torch fp32 3"], SHAPES)
    )


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"\xff\xfe\x00binary",
        b"[]",
        b'{"key": {"format": 1}, "backend": "openvino", "precision": "fp32"}',
        "KEY_WITH_UNKNOWN_BACKEND",
    ],
)
def test_a_corrupt_cache_file_is_measured_again_with_a_warning(
    artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes | str
) -> None:
    cache = tmp_path / "cache"
    pending = plan(artifact, cache)
    assert pending.cache_key is not None
    path = cache_file(cache, pending.cache_key)
    path.parent.mkdir(parents=True)
    if content == "KEY_WITH_UNKNOWN_BACKEND":
        content = json.dumps(
            {"key": pending.cache_key, "backend": "tensorrt", "precision": "fp32",
             "tokens_per_s": {}, "measured_at": "x"}
        ).encode()  # fmt: skip
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING):
        served = load(artifact, cache)
    assert "is not valid" in caplog.text or "cannot be read" in caplog.text
    assert "measuring again" in caplog.text
    record = json.loads(path.read_text())  # rewritten by the new measurement
    assert record["backend"] == served.runtime.backend.value


def test_an_unwritable_cache_warns_and_serves_the_measured_choice(
    artifact: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = blocker / "cache"  # mkdir fails: its parent is a file (as root, chmod would not)
    with caplog.at_level(logging.WARNING):
        served = load(artifact, cache)
    assert served.backend.kind in ("torch", "onnx", "openvino")
    assert "cannot be remembered" in caplog.text
    assert plan(artifact, cache).pending  # nothing remembered: measured at the next start too


def test_an_explicit_backend_wins_over_the_remembered_choice(
    artifact: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    pending = plan(artifact, cache)
    assert pending.cache_key is not None
    measured = Measured("openvino", "fp32", {"openvino fp32": 9.0}, "2026-01-01T00:00:00+00:00")
    from worker.backends.choice_cache import write_choice

    write_choice(cache, pending.cache_key, measured)
    assert read_choice(cache, pending.cache_key, ["openvino fp32"]) == measured
    runtime = plan(artifact, cache, backend="torch")
    assert (runtime.backend.value, runtime.backend.reason) == ("torch", "set explicitly")
    assert runtime.measured is None and not runtime.pending
    served = load(artifact, cache, backend="onnx")
    assert served.backend.kind == "onnx"


def test_info_prints_the_remembered_choice_or_not_measured_yet(
    artifact: Path, tmp_path: Path
) -> None:
    from worker.cli import describe
    from worker.config import Settings

    cache = tmp_path / "cache"
    settings = Settings(
        model=str(artifact), device="cpu", precision="fp32", inference_threads=1, cache_dir=cache
    )
    info = describe(settings, None)
    assert info["backend"] == "auto"
    assert info["backend_measurement"] == ("not measured yet: torch fp32, onnx fp32, openvino fp32")
    assert not cache.exists()  # info without --load measures nothing
    loaded = describe(settings, None, load=True)  # info --load: measured as at a start
    assert loaded["backend"] == loaded["backend_measurement"]["backend"]
    assert "measured at this start" in loaded["chosen"]["backend"]
    info = describe(settings, None)
    assert info["backend"] == loaded["backend"]
    assert "remembered for this machine" in info["chosen"]["backend"]
    assert info["backend_measurement"]["per"] == "CPU-second"
    assert set(info["backend_measurement"]["padded_tokens_per_s"]) == {
        "torch fp32", "onnx fp32", "openvino fp32"
    }  # fmt: skip
