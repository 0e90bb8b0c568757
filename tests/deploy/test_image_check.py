"""The container-structure rules `make image-check` applies to the built image's metadata
(scripts/image_check.py), on the config `podman/docker image inspect` returns."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from scripts.image_check import metadata_problems, served_backend

GOOD: dict[str, Any] = {
    "User": "10001:10001",
    "Entrypoint": ["/usr/bin/tini", "--", "moderation-worker"],
    "Cmd": ["run"],
    "ExposedPorts": {"9000/tcp": {}},
    "Env": ["PATH=/opt/venv/bin:/usr/bin", "HF_HUB_OFFLINE=1"],
    "Healthcheck": {"Test": ["CMD", "python3", "-c", "urlopen('http://127.0.0.1:9000/healthz')"]},
    "Labels": {
        "org.opencontainers.image.title": "moderation-worker",
        "org.opencontainers.image.description": "scores",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.version": "0.1.0",
        "org.opencontainers.image.revision": "abc123",
    },
}


def test_a_correct_image_passes() -> None:
    assert metadata_problems(GOOD, "0.1.0", "abc123") == []


def changed(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    config = copy.deepcopy(GOOD)
    target = config
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("User",), "0", "User"),  # root
        (("User",), "moderation", "User"),  # not numeric: runAsNonRoot cannot verify it
        (("Entrypoint",), ["moderation-worker"], "Entrypoint"),  # no tini: SIGTERM not forwarded
        (("Healthcheck",), None, "HEALTHCHECK"),  # an OCI-format (podman default) build
        (("ExposedPorts",), {}, "9000"),
        (("Labels", "org.opencontainers.image.revision"), None, "revision"),
        (("Labels", "org.opencontainers.image.version"), "0.0.9", "version"),
        (("Env",), ["PATH=/usr/bin"], "HF_HUB_OFFLINE"),
    ],
)
def test_each_rule_catches_its_mistake(path: tuple[str, ...], value: Any, expected: str) -> None:
    problems = metadata_problems(changed(path, value), "0.1.0", "abc123")
    assert len(problems) >= 1 and any(expected in p for p in problems), problems


def test_revision_of_another_build_is_caught() -> None:
    assert metadata_problems(GOOD, "0.1.0", "def456")
    assert metadata_problems(GOOD, "0.1.0", None) == []  # unknown build: only presence checked


def test_the_backend_is_read_from_the_start_up_log() -> None:
    log = (
        "2026-12-06 05:30:01,200 INFO worker.app: model: bert-tiny (fp16)\n"
        "2026-12-06 05:30:01,201 INFO worker.app: backend: openvino (auto: fastest here, "
        "measured at this start: openvino bf16 160,000, onnx int8 150,000)\n"
        "2026-12-06 05:30:01,202 INFO worker.app: device: cpu (auto: no GPU)\n"
    )
    assert served_backend(log) == (
        "openvino (auto: fastest here, measured at this start: openvino bf16 160,000, "
        "onnx int8 150,000)"
    )
    assert served_backend("2026-12-06 05:30:01,202 INFO worker.app: device: cpu\n") is None
