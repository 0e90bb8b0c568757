"""Hostile policy files against a real worker hot-reloading its policy (the reduced catalog of
`testing/reliability/policy_files.py`; `make reliability` runs it in full): each file gets its
one expected outcome, /healthz answers throughout, RSS stays bounded, nothing quotes the files."""

from __future__ import annotations

from pathlib import Path

import pytest

from testing.reliability.policy_files import probe_policy_files
from testing.topics import Topics

pytestmark = pytest.mark.integration

HEALTHZ_WORST_MS = 1000  # the loop answers within this while every file is probed
RSS_GROWTH_MIB = 100  # a 2.5 MB file parsed on the loop kept +290 MiB


def test_every_hostile_policy_file_is_refused_and_the_worker_keeps_answering(
    kafka_bootstrap: str, topics: Topics, tiny_model_dir: Path, tmp_path: Path
) -> None:
    figures = probe_policy_files(
        kafka_bootstrap, topics, tmp_path, model=str(tiny_model_dir), full=False
    )
    assert figures["outcomes"] == figures["expected"], figures
    rejected = sum(outcome == "rejected" for outcome in figures["expected"].values())
    assert figures["rejected_log_lines"] == rejected, figures
    assert not figures["canary_in_log"] and not figures["tracebacks_in_log"], figures
    assert figures["healthz_failures"] == 0 and figures["healthz_requests"] > 50, figures
    assert figures["healthz_worst_ms"] < HEALTHZ_WORST_MS, figures
    assert figures["rss_after_mib"] - figures["rss_before_mib"] < RSS_GROWTH_MIB, figures
    assert figures["exit_code"] == 0, figures
