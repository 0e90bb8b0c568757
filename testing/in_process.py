"""The worker run in-process (`worker.app.Worker` on the test's event loop), where a test can
swap its backend or watch its state: the settings such a worker runs with."""

from __future__ import annotations

from testing.ports import free_port
from testing.topics import Topics
from worker.config import Settings, load_settings


def settings_for(bootstrap: str, topics: Topics, **overrides: object) -> Settings:
    """Settings for `topics` on `bootstrap`: CPU, fp32, commits every 200 ms, metrics on a free
    loopback port; `overrides` replace any of them or add others."""
    defaults: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "input_topic": topics.input,
        "output_topic": topics.output,
        "dlq_topic": topics.dlq,
        "group_id": topics.group,
        "device": "cpu",
        "metrics_host": "127.0.0.1",
        "metrics_port": free_port(),
        "commit_interval_ms": 200,
        "precision": "fp32",
    }
    return load_settings(**(defaults | overrides))
