"""Where an export may write: a missing or empty directory, or an earlier export of the same
model; anything else only when forced."""

from __future__ import annotations

import json
from pathlib import Path

from schemas.artifact import WEIGHTS_FILE, weights_version
from training.artifact_files import INFO_FILE
from training.sources import UsageError


def exported_from(model_dir: Path) -> dict[str, str]:
    """What an export records about its source (`exported_from` in its training info), to
    recognise its own earlier exports."""
    return {"weights_version": weights_version(model_dir / WEIGHTS_FILE)}


def check_export_target(model_dir: Path, out_dir: Path, *, force: bool) -> None:
    """`UsageError` unless `out_dir` is missing, empty, or an earlier export of the model in
    `model_dir` (or `force`): export never mixes its files with another model's, nor rewrites
    its own source, without being asked to."""
    if force or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file; give a directory to export into")
    if out_dir.resolve() == model_dir.resolve():
        raise UsageError(
            f"{out_dir} is the source itself; export into a new directory "
            "(or pass --force to rewrite it in place)"
        )
    present = sorted(item.name for item in out_dir.iterdir())
    if not present:
        return
    info_file = out_dir / INFO_FILE
    try:
        earlier = json.loads(info_file.read_text()).get("exported_from") or {}
    except (OSError, ValueError, AttributeError):
        earlier = {}
    if earlier.get("weights_version") == exported_from(model_dir)["weights_version"]:
        return
    shown = ", ".join(present[:3]) + (", ..." if len(present) > 3 else "")
    raise UsageError(
        f"{out_dir} is not empty ({len(present)} entries: {shown}) and is not an earlier export "
        f"of {model_dir}; export into a new or empty directory, or pass --force to replace the "
        "artifact files there"
    )
