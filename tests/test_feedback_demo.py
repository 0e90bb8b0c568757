"""`make feedback-demo` in its quick mode, end to end as `make` runs it (a subprocess, a real
broker, the real CLIs): exit 0, every decision stored and exported with the row's true label,
calibration lowering the ECE, the thresholds' policy hot-reloaded by the running worker (new
outputs carry its version), and the fine-tuned candidate scoring every comment as a shadow."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.feedback_demo import FIRST_POLICY, LABEL, validation_rows

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
QUICK_ROWS = 160  # the demo's --quick


def run_demo(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "scripts/feedback_demo.py", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, str]:
    """The quick demo's summary facts, its work directory and its stdout."""
    work = tmp_path_factory.mktemp("feedback-demo")
    result = run_demo("--quick", "--work-dir", str(work))
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    [line] = [x for x in result.stdout.splitlines() if x.startswith("SUMMARY ")]
    return json.loads(line.removeprefix("SUMMARY ")), work, result.stdout


def test_the_decisions_go_through_suggestscore_and_come_back_with_their_labels(
    quick: tuple[dict[str, Any], Path, str],
) -> None:
    facts, work, _ = quick
    assert facts["scored"] == QUICK_ROWS and facts["first_policy"] == [FIRST_POLICY]
    half = QUICK_ROWS // 2
    assert facts["decisions"] == half  # every Coral request answered 200 and stored
    assert facts["exported"]["rows"] == half and facts["exported"]["without_text"] == 0
    data = validation_rows(QUICK_ROWS)
    with (work / "feedback.csv").open(newline="") as handle:
        exported = {row["id"]: row for row in csv.DictReader(handle)}
    column = data.label_names.index(LABEL)
    for i in range(0, QUICK_ROWS, 2):  # the community half, with the true label, text kept
        row = exported[f"comment:v{i}"]
        assert row["comment_text"] == data.texts[i]
        assert row[LABEL] == str(int(data.labels[i, column]))  # type: ignore[index]
        assert row["insult"] == ""  # Coral judges toxicity only: the rest is not judged
    # the running worker read the decisions back (live quality) and counted each against the
    # flag it published: the same precision and recall as computed from the outputs here
    live, community = facts["live"], facts["community"]
    assert live["decisions"] == half
    assert live["precision"] == pytest.approx(community["precision"])
    assert live["recall"] == pytest.approx(community["recall"])


def test_calibration_and_the_hot_reloaded_policy(quick: tuple[dict[str, Any], Path, str]) -> None:
    facts, _, stdout = quick
    calibration = facts["calibration"]
    assert calibration["ece_after"] < calibration["ece_before"]
    chosen = facts["thresholds"]
    assert chosen["policy_version"] == f"{FIRST_POLICY}-feedback.1"
    low, high = chosen["precision_interval"]
    assert chosen["target"] == "precision >= 0.8" and low <= chosen["precision"] <= high
    # the running worker reloaded the file, and what it scored next carries the new version
    assert facts["reload"]["reloads"] >= 1
    assert facts["reload"]["policy_versions"] == [chosen["policy_version"]]
    assert f"version {chosen['policy_version']}: {LABEL} threshold" in stdout


def test_the_candidate_scores_every_comment_as_a_shadow(
    quick: tuple[dict[str, Any], Path, str],
) -> None:
    facts, work, _ = quick
    assert facts["fit"]["collapsed"] is False
    assert (work / "candidate" / "model" / "config.json").is_file()
    shadow = facts["shadow"]
    assert shadow["scored"] == QUICK_ROWS // 2  # the judging half, scored again
    assert shadow["dropped"] == 0 and shadow["failures"] == 0
    assert facts["shadow_policy_versions"] == [facts["thresholds"]["policy_version"]]


def test_a_bad_argument_is_one_line_and_exit_2() -> None:
    result = run_demo("--rows", "10", timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == "feedback-demo: --rows must be at least 40"
