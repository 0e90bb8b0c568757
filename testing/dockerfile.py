"""The Dockerfile as data: its instructions and its stages (no Docker engine needed)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; line continuations joined, comments dropped."""
    result: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        result.append((keyword.upper(), args.strip()))
        current = ""
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM included)."""
    result: dict[str, list[tuple[str, str]]] = {}
    name = None
    for keyword, args in instructions():
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, args
            name = match.group(2) or match.group(1)
            result[name] = []
        if name is not None:
            result[name].append((keyword, args))
    return result
