"""The backend `auto` measured on this machine, remembered in a small JSON file.

One file per key under the cache directory (`MODERATION_CACHE_DIR`, unset: `$TMPDIR/moderation-
worker`, writable with a read-only root filesystem). The key is everything the measurement
depends on: the CPU model and flags, the inference threads, the artifact's version, the
candidates (backend, precision and library version) and the shapes timed. A file that cannot be
read, is not JSON, holds another key or names a backend that is no candidate is a miss (logged
as a warning): the worker measures again and rewrites it. A directory that cannot be written is
a warning too: the choice is used, only not remembered. Nothing here raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.backends.hardware import CpuInfo

log = logging.getLogger(__name__)

CACHE_SUBDIR = "moderation-worker"
FORMAT = 1


def default_cache_dir() -> Path:
    """`$TMPDIR/moderation-worker` (/tmp/moderation-worker on Linux)."""
    return Path(tempfile.gettempdir()) / CACHE_SUBDIR


@dataclass(frozen=True)
class Measured:
    """The measured choice: the fastest candidate and every candidate's figure."""

    backend: str
    precision: str
    tokens_per_s: dict[str, float]  # "openvino bf16" -> padded tokens per second
    measured_at: str  # ISO 8601, UTC
    basis: str = "wall"  # "cpu": per CPU-second of the process (one thread), "wall": per second

    def summary(self) -> str:
        figures = ", ".join(
            f"{name} {speed:,.0f}"
            for name, speed in sorted(self.tokens_per_s.items(), key=lambda item: -item[1])
        )
        unit = "padded tokens per CPU-second" if self.basis == "cpu" else "padded tokens/s"
        return f"{unit}: {figures}; measured {self.measured_at}"


def cache_key(
    cpu: CpuInfo,
    threads: int,
    artifact_version: str,
    candidates: Sequence[str],
    shapes: Sequence[tuple[int, int]],
) -> dict[str, Any]:
    """What a measurement depends on; `candidates` as "backend precision library-version"."""
    return {
        "format": FORMAT,
        "cpu": cpu.model,
        "flags": sorted(cpu.flags),
        "threads": threads,
        "artifact_version": artifact_version,
        "candidates": sorted(candidates),
        "shapes": [list(shape) for shape in shapes],
    }


def cache_file(cache_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"backend-choice-{digest}.json"


def read_choice(cache_dir: Path, key: dict[str, Any], allowed: Sequence[str]) -> Measured | None:
    """The remembered choice for `key`, or None (a miss: absent, unreadable or not valid).
    `allowed`: the "backend precision" names that may be chosen now."""
    path = cache_file(cache_dir, key)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("backend choice cache %s cannot be read (%s): measuring again", path, exc)
        return None
    try:
        data = json.loads(text)
        if data["key"] != key:
            raise ValueError("it holds another key")
        measured = Measured(
            backend=str(data["backend"]),
            precision=str(data["precision"]),
            tokens_per_s={str(k): float(v) for k, v in data["tokens_per_s"].items()},
            measured_at=str(data["measured_at"]),
            basis=str(data.get("basis", "wall")),
        )
        if f"{measured.backend} {measured.precision}" not in allowed:
            raise ValueError(f"{measured.backend} {measured.precision} is not a candidate")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("backend choice cache %s is not valid (%s): measuring again", path, exc)
        return None
    return measured


def write_choice(cache_dir: Path, key: dict[str, Any], measured: Measured) -> Path | None:
    """Remember `measured` for `key` (atomically: a temporary file renamed); the path, or None
    with a warning where the directory cannot be written."""
    path = cache_file(cache_dir, key)
    record = {
        "key": key,
        "backend": measured.backend,
        "precision": measured.precision,
        "tokens_per_s": measured.tokens_per_s,
        "measured_at": measured.measured_at,
        "basis": measured.basis,
    }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=cache_dir, prefix=".backend-choice-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(record, handle, indent=1)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning(
            "backend choice cannot be remembered in %s (%s): it will be measured at every start",
            cache_dir, exc,
        )  # fmt: skip
        return None
    return path
