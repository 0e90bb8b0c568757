"""Serving without torch (issue 26, point 4): the CPU image has neither torch nor transformers
and serves through ONNX Runtime or OpenVINO, whichever `auto` measures faster. Here the worker
runs as a child process in which importing torch, transformers, safetensors or sympy fails and
`importlib.util.find_spec` says they are not installed (`sys.modules[name] = None`, set by a
`sitecustomize` on PYTHONPATH), as in the image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from testing.http import http_post
from testing.ports import free_port
from testing.topics import Topics
from testing.worker_process import (
    QUICK_ENV,
    REPO_ROOT,
    WorkerProcess,
    refusal_line,
    worker_env,
)
from worker.backends.model import ServedModel, load_served_model

ABSENT = ("torch", "transformers", "safetensors", "sympy")  # what the CPU image does not carry
REAL_COMMENTS = 40  # of the labelled validation split


@pytest.fixture(scope="module")
def without_torch(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment variables for a child Python in which ABSENT cannot be imported."""
    directory = tmp_path_factory.mktemp("without-torch")
    (directory / "sitecustomize.py").write_text(
        "import sys\n"
        f"for name in {ABSENT!r}:\n"
        "    sys.modules[name] = None  # import fails; importlib.util.find_spec says None\n"
    )
    path = os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def onnx_int8() -> ServedModel:
    """The bundled model on ONNX Runtime int8 in this process (torch installed)."""
    return load_served_model(None, backend="onnx", precision="int8", threads=1)


def in_process(backend: str, precision: str) -> ServedModel:
    """The bundled model on `backend` in this process: the scores a torch-less worker that chose
    it must give."""
    return load_served_model(None, backend=backend, precision=precision, threads=1)


def chosen(log: str) -> tuple[str, str]:
    """(backend, precision) from the worker's start-up log (`backend: ...`, `precision: ...`)."""
    found = {}
    for line in log.splitlines():
        for name in ("backend", "precision"):
            if f" worker.app: {name}: " in line:
                found[name] = line.split(f" worker.app: {name}: ", 1)[1].split()[0]
    return found["backend"], found["precision"]


def test_the_blocker_blocks(without_torch: dict[str, str]) -> None:
    """The child really cannot import torch (else every test here would pass vacuously)."""
    code = "import importlib.util as u\ntry:\n import torch\nexcept ImportError:\n print('no')\n"
    code += "print(u.find_spec('torch'), u.find_spec('transformers'))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=os.environ | without_torch,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert result.stdout.split() == ["no", "None", "None"]


def test_info_load_measures_onnx_runtime_and_openvino_for_the_bundled_model(
    without_torch: dict[str, str], tmp_path: Path
) -> None:
    """`info --load` (what the image's build and healthcheck-free smoke test run): auto, with
    torch absent, measures the installed backends the bundled model allows (ONNX Runtime int8,
    and OpenVINO on its fp32 graph where openvino is installed, as in the cpu image), loads the
    faster and scores, as `run` would."""
    from worker.backends.hardware import read_cpu
    from worker.backends.runtime import openvino_installed

    env = os.environ | without_torch | {"MODERATION_CACHE_DIR": str(tmp_path / "cache")}
    env = {k: v for k, v in env.items() if k not in ("MODERATION_BACKEND", "MODERATION_PRECISION")}
    result = subprocess.run(
        [sys.executable, "-m", "worker", "info", "--json", "--load"], env=env, cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout)
    assert info["torch"] is None and info["cuda_available"] is False
    assert info["device"] == "cpu"
    reason = info["chosen"]["backend"]
    if openvino_installed():
        openvino = "openvino bf16" if read_cpu().native_bf16 else "openvino fp32"
        assert "measured at this start" in reason and "onnx int8" in reason, reason
        assert openvino in reason, reason
        assert f"{info['backend']} {info['precision']}" in ("onnx int8", openvino)
    else:
        assert (info["backend"], info["precision"]) == ("onnx", "int8")
        assert "the only CPU backend" in reason, reason
    expected = in_process(info["backend"], info["precision"])
    expected = expected.score(["a smoke test of the loaded model"])[0]
    np.testing.assert_allclose(info["loaded"]["scores"], expected, atol=1e-6)


@pytest.fixture
def http_worker(without_torch: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    """`python -m worker run --http-only` with the bundled model, all settings auto, torch
    absent; no broker (HTTP only)."""
    overrides = {k: v for k, v in QUICK_ENV.items() if k != "MODERATION_PRECISION"}
    env = worker_env(
        "127.0.0.1:9", Topics.fresh("no-torch"), free_port(),
        overrides | without_torch | {
            "MODERATION_HTTP_API_PORT": str(free_port()),
            "MODERATION_CACHE_DIR": str(tmp_path / "cache"),
        },
    )  # fmt: skip
    for name in ("MODERATION_MODEL", "MODERATION_BACKEND", "MODERATION_PRECISION"):
        env.pop(name, None)
    worker = WorkerProcess(env, tmp_path / "worker.log", args=["--http-only"])
    yield worker
    worker.kill()


def test_real_comments_are_scored_without_torch(http_worker: WorkerProcess) -> None:
    """The serving route end to end (start, warm-up, HTTP intake, batching, inference, answer)
    with torch absent: real comments get the scores the backend auto chose gives them."""
    from bench.corpus import DEFAULT_CORPUS, validation_split

    validation = validation_split(DEFAULT_CORPUS, limit=REAL_COMMENTS)
    assert validation is not None
    texts = [text for text in validation.texts if text.strip()]
    http_worker.wait_ready(120)
    backend, precision = chosen(http_worker.log())
    assert backend in ("onnx", "openvino"), http_worker.log()[-2000:]
    reference = in_process(backend, precision)
    analyze = f"{http_worker.api_url}/v1alpha1/comments:analyze?key=K"
    toxicity = reference.contract.labels.index(reference.contract.api_attributes["TOXICITY"])
    for text in texts:
        body = {"comment": {"text": text}, "requestedAttributes": {"TOXICITY": {}},
                "languages": ["en"], "doNotStore": True}  # fmt: skip
        result = http_post(analyze, orjson.dumps(body))
        assert result.status == 200, result.body
        score = json.loads(result.body)["attributeScores"]["TOXICITY"]["summaryScore"]["value"]
        expected = float(reference.score([text])[0][toxicity])
        assert score == pytest.approx(expected, abs=1e-5), text
    assert http_worker.terminate(timeout=60) == 0


def test_an_artifact_only_torch_can_serve_is_refused(
    without_torch: dict[str, str], tiny_model_dir: Path
) -> None:
    """No ONNX graph and no torch: one line saying what to do, exit 2, before anything loads."""
    assert not list(tiny_model_dir.glob("*.onnx"))
    line = refusal_line(
        without_torch | {"MODERATION_MODEL": str(tiny_model_dir), "MODERATION_PRECISION": "auto"}
    )
    assert "has no ONNX graph" in line and "torch is not installed" in line, line
    assert "moderation-train export --onnx" in line and "moderation-worker[torch]" in line, line


@pytest.fixture(scope="module")
def int8_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model without its fp32 graph (an artifact exported with int8 only)."""
    import shutil

    from worker.backends.model import DEFAULT_MODEL_DIR

    artifact = tmp_path_factory.mktemp("int8-only") / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, artifact)
    (artifact / "model.onnx").unlink()
    return artifact


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"MODERATION_BACKEND": "torch"}, "backend torch: torch is not installed"),
        ({"MODERATION_PRECISION": "fp32"}, "no installed backend serves"),
    ],
    ids=["backend-torch", "no-fp32-graph"],
)
def test_what_needs_torch_is_refused_in_one_line(
    without_torch: dict[str, str], int8_only: Path, overrides: dict[str, str], words: str
) -> None:
    """An explicit torch backend, or a precision only torch serves for this artifact (one with
    only the int8 graph): refused at once, exit 2."""
    line = refusal_line(without_torch | {"MODERATION_MODEL": str(int8_only)} | overrides)
    assert words in line, line
    assert "moderation-worker[torch]" in line, line


def test_a_slow_tokenizer_without_transformers_is_refused_in_one_line(
    without_torch: dict[str, str], tmp_path: Path
) -> None:
    """An ONNX artifact with only `vocab.txt` (no `tokenizer.json`) needs transformers to convert
    its tokenizer; without it: one line saying what to do, exit 2."""
    import shutil

    from worker.backends.model import DEFAULT_MODEL_DIR

    artifact = tmp_path / "slow-tokenizer"
    shutil.copytree(DEFAULT_MODEL_DIR, artifact)
    (artifact / "tokenizer.json").unlink()
    line = refusal_line(
        without_torch | {"MODERATION_MODEL": str(artifact), "MODERATION_PRECISION": "auto"}
    )
    assert "has no tokenizer.json" in line and "transformers" in line, line
    assert "moderation-worker[torch]" in line, line


def test_the_training_cli_says_what_to_install(
    without_torch: dict[str, str], tmp_path: Path
) -> None:
    """`moderation-train` is in the wheel, its libraries are not in a serving install: one
    line naming the extra, exit 2 (not a traceback from deep inside a command)."""
    result = subprocess.run(
        [sys.executable, "-m", "training", "evaluate", "--model", str(tmp_path),
         "--data", str(tmp_path / "x.csv"), "--output-dir", str(tmp_path / "out")],
        env=os.environ | without_torch, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [
        "moderation-train: error: torch, transformers, safetensors not installed: training "
        "needs the train extra: pip install 'moderation-worker[train]' (torch first, pinned)"
    ]
