"""`moderation-worker` as a user meets it: a bad setting, path or device is one line and exit 2,
before torch or transformers is imported; unknown variables are named; help shows defaults."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from testing.importtime import split_importtime
from testing.worker_process import REPO_ROOT
from worker.backends.model import DEFAULT_MODEL_DIR
from worker.backends.runtime import gpu_may_be_present
from worker.config import Settings, env_names

HEAVY = ("torch", "transformers", "onnxruntime")  # seconds to import; aiokafka is light


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, list[str], set[str]]:
    """Exit code, stderr lines (import-time lines removed) and the top-level packages the
    process imported (`python -X importtime`), through the real entry point."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "worker", *args],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "MODERATION_METRICS_PORT": "0"}
        | (env or {}),
    )  # fmt: skip
    lines, imported = split_importtime(result.stderr)
    return result.returncode, lines, imported


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("localhost:notaport", "the port 'notaport' is not a number in 1..65535"),
        ("http://localhost:9092", "without a scheme such as http://"),
        ("", "must not be empty"),
        ("broker-1:9092,broker-2", "'broker-2' is not host:port"),
    ],
)
def test_bad_bootstrap_servers_fail_at_once_naming_the_variable(value: str, message: str) -> None:
    code, lines, imported = run_cli("run", env={"KAFKA_BOOTSTRAP_SERVERS": value})
    assert code == 2
    assert len(lines) == 1, lines
    assert "KAFKA_BOOTSTRAP_SERVERS" in lines[0] and message in lines[0]
    assert not imported & set(HEAVY), imported


def test_an_empty_setting_names_its_variable() -> None:
    code, lines, _ = run_cli("run", env={"MODERATION_INPUT_TOPIC": ""})
    assert code == 2
    assert lines == [
        "moderation-worker: invalid input_topic (MODERATION_INPUT_TOPIC): must not be empty"
    ]


def _copy_without(tmp_path: Path, *names: str) -> Path:
    target = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, target)
    for name in names:
        (target / name).unlink()
    return target


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("/nonexistent/model", "model directory '/nonexistent/model' does not exist"),
        ("not-a-model", "is not a local directory, and as a Hugging Face hub id it cannot"),
        ("EMPTY_DIR", "has no config.json: not a model artifact"),
        ("NO_TOKENIZER", "has no tokenizer"),
    ],
)
def test_a_bad_model_is_refused_before_the_heavy_imports(
    tmp_path: Path, model: str, message: str
) -> None:
    if model == "EMPTY_DIR":
        model = str(tmp_path)
    elif model == "NO_TOKENIZER":
        model = str(_copy_without(tmp_path, "tokenizer.json", "vocab.txt"))
    code, lines, imported = run_cli("run", "--model", model, "--bootstrap-servers", "127.0.0.1:1")
    assert code == 2
    assert len(lines) == 2, lines  # the "starting with" log line, then the error
    assert lines[-1].startswith("moderation-worker: ") and message in lines[-1]
    assert not imported & set(HEAVY), imported


@pytest.mark.skipif(gpu_may_be_present(), reason="needs a machine without a GPU driver")
def test_cuda_without_a_gpu_is_refused_before_torch_is_imported() -> None:
    code, lines, imported = run_cli("run", "--device", "cuda", "--bootstrap-servers", "h:1")
    assert code == 2
    assert "device 'cuda' requested but this machine has no NVIDIA GPU driver" in lines[-1]
    assert "HTTP endpoints" not in "\n".join(lines)
    assert not imported & set(HEAVY), imported


def test_info_describes_the_model_without_importing_torch_or_transformers() -> None:
    code, lines, imported = run_cli("info", "--json", env={"MODERATION_DEVICE": "cpu"})
    assert code == 0, lines
    assert not imported & {"torch", "transformers"}, imported


def test_unknown_moderation_variables_are_named_with_the_closest_setting() -> None:
    code, lines, _ = run_cli("info", env={"MODERATION_MAX_BATCHSIZE": "5", "MODERATION_ZZZ": "1"})
    assert code == 0
    warnings = [line for line in lines if "unknown setting" in line]
    assert len(warnings) == 2, lines
    assert (
        "MODERATION_MAX_BATCHSIZE is ignored; did you mean MODERATION_MAX_BATCH_SIZE?"
        in (warnings[0])
    )
    assert "MODERATION_ZZZ is ignored (settings: docs/CONTRACTS.md)" in warnings[1]


def test_the_old_threads_variable_still_works_with_one_warning_at_start() -> None:
    code, lines, _ = run_cli(
        "info", "--json", env={"MODERATION_DEVICE": "cpu", "MODERATION_TORCH_THREADS": "1"}
    )
    assert code == 0, lines
    warnings = [line for line in lines if "MODERATION_TORCH_THREADS" in line]
    assert len(warnings) == 1, lines
    assert "deprecated: set MODERATION_INFERENCE_THREADS instead" in warnings[0]
    assert not [line for line in lines if "unknown setting" in line], lines


def test_run_help_shows_defaults_and_every_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "run", "--help"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60, check=True,
    )  # fmt: skip
    help_text = " ".join(result.stdout.split())
    default = {name: field.default for name, field in Settings.model_fields.items()}
    assert f"env MODERATION_MAX_BATCH_SIZE (default: {default['max_batch_size']})" in help_text
    assert f"env KAFKA_BOOTSTRAP_SERVERS (default: {default['bootstrap_servers']})" in help_text
    for name in env_names():
        if name != "MODERATION_BOOTSTRAP_SERVERS":
            assert name in help_text
    assert f"MODERATION_SESSION_TIMEOUT_MS={default['session_timeout_ms']}" in help_text
    assert "docs/CONTRACTS.md" in help_text


def test_info_json_is_valid_with_versions_read_without_importing() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "worker", "info", "--json"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = orjson.loads(result.stdout)
    assert info["torch"] and info["transformers"] and info["aiokafka"]


def test_info_load_scores_one_text_on_the_chosen_backend() -> None:
    """What the image build runs as its smoke test (Dockerfile): the weights really load."""
    result = subprocess.run(
        [sys.executable, "-m", "worker", "info", "--json", "--load"],
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "MODERATION_DEVICE": "cpu"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    info = orjson.loads(result.stdout)
    assert info["loaded"]["device"] == "cpu"
    scores = info["loaded"]["scores"]
    assert len(scores) == len(info["labels"]) and all(0 < p < 1 for p in scores)


def test_loading_the_model_prints_no_transformers_loss_type_notice() -> None:
    """Tracing the model (CPU torch, as `run` serves) used to print transformers' training-only
    "`loss_type=None` ... `ForCausalLMLoss`" line at every start."""
    code, lines, _ = run_cli("info", "--load", "--json", env={"MODERATION_BACKEND": "torch"})
    assert code == 0, lines
    assert not [line for line in lines if "loss_type" in line or "ForCausalLMLoss" in line], lines
