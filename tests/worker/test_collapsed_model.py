"""A collapsed model that `moderation-train export --force` wrote anyway is served, but not
silently: the artifact records the collapse (`config.json` `collapsed`), the worker logs a
WARNING at start naming it and what to do, exports `moderation_model_collapsed` 1, and
`moderation-worker info` shows it. A normal export records nothing and the worker says nothing."""

from __future__ import annotations

import gc
import json
import logging
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from schemas.artifact import read_contract
from testing.http import metric_sample
from testing.models import DEFAULT_MODEL_DIR
from testing.ports import free_port
from testing.topics import Topics
from testing.training_data import tiny_bert_dir, tiny_rows, write_csv
from testing.worker_process import QUICK_ENV, WorkerProcess, worker_env
from training.cli import main as train
from worker.app import StartupClock, load_and_warm_up
from worker.config import Settings

REPO = Path(__file__).resolve().parents[2]
# one epoch of ten steps leaves the tiny random BERT giving every text the same scores
COLLAPSING = ["--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--seed", "3"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`forced`: a collapsed fit exported with --force; `normal`: the bundled model exported
    the same way, without it; `run`: the collapsed run's own model directory."""
    work = tmp_path_factory.mktemp("collapsed")
    data = write_csv(work / "small.csv", tiny_rows(80))
    run = work / "run"
    fit = ["fit", "--base-model", str(tiny_bert_dir(work / "tiny-bert")), "--train", str(data)]
    options = ["--output-dir", str(run), "--max-length", "32", "--no-progress", *COLLAPSING]
    assert train([*fit, *options]) == 0
    assert train(["export", str(run), str(work / "refused")]) == 2  # as before: refused
    assert train(["export", str(run), str(work / "forced"), "--force"]) == 0
    assert train(["export", str(DEFAULT_MODEL_DIR), str(work / "normal")]) == 0
    return {"forced": work / "forced", "normal": work / "normal", "run": run / "model"}


def start_up_warnings(model: Path, caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING lines the worker's start-up (`load_and_warm_up`, as `run` does) logs."""
    before = sys.getswitchinterval()
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="worker"):
            load_and_warm_up(
                Settings(model=str(model), device="cpu", max_length=32), StartupClock()
            )
    finally:
        sys.setswitchinterval(before)
        gc.unfreeze()
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_force_exported_collapsed_model_is_recorded_and_warned_about_at_start(
    artifacts: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("forced", "run"):  # export --force, and the training run's own directory
        config = json.loads((artifacts[name] / "config.json").read_text())
        assert "vary by at most" in config["collapsed"]["detail"], config.get("collapsed")
        [warning] = [w for w in start_up_warnings(artifacts[name], caplog) if "collapsed" in w]
        contract = read_contract(artifacts[name])
        assert f"model {contract.model_name} (version {contract.model_version}) looks " in warning
        assert config["collapsed"]["checked_on"] in warning
        assert "flags everything or nothing" in warning
        assert "fit --init-from worker/default_model" in warning  # what to do


def test_a_normal_export_records_nothing_and_starts_without_the_warning(
    artifacts: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    config = json.loads((artifacts["normal"] / "config.json").read_text())
    assert "collapsed" not in config
    assert not [w for w in start_up_warnings(artifacts["normal"], caplog) if "collapsed" in w]


def test_a_running_worker_logs_the_warning_and_exports_the_gauge(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    """`moderation-worker run` as deployed (HTTP only here: no broker needed): the WARNING in
    its log, `moderation_model_collapsed` 1 for the forced export and 0 for the normal one."""
    for name, expected in (("forced", 1.0), ("normal", 0.0)):
        env = worker_env(
            "127.0.0.1:9", Topics.fresh("collapsed"), free_port(),
            QUICK_ENV | {
                "MODERATION_MODEL": str(artifacts[name]),
                "MODERATION_HTTP_API_PORT": str(free_port()),
            },
        )  # fmt: skip
        worker = WorkerProcess(env, tmp_path / f"{name}.log", args=["--http-only"])
        try:
            worker.wait_ready(120)
            gauge = metric_sample(worker.get("/metrics").body, "moderation_model_collapsed")
        finally:
            assert worker.stop() == 0
        warnings = [x for x in worker.log().splitlines() if "WARNING" in x and "collapsed" in x]
        assert gauge == expected
        assert len(warnings) == expected, warnings
        if expected:
            assert "looks collapsed" in warnings[0] and "--init-from" in warnings[0]


def test_info_shows_the_collapse(artifacts: dict[str, Path]) -> None:
    shown = {}
    for name in ("forced", "normal"):
        result = subprocess.run(
            [sys.executable, "-m", "worker", "info", "--json", "--model", str(artifacts[name])],
            cwd=REPO, capture_output=True, text=True, timeout=120,
            env={"MODERATION_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        shown[name] = orjson.loads(result.stdout)["collapsed"]
    assert shown["normal"] is None
    assert "looks collapsed" in shown["forced"] and "--init-from" in shown["forced"]
