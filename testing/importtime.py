"""Reading `python -X importtime` output, for tests that check what a command imports."""

from __future__ import annotations


def split_importtime(stderr: str) -> tuple[list[str], set[str]]:
    """(the other non-empty stderr lines, the top-level packages that were imported)."""
    lines: list[str] = []
    imported: set[str] = set()
    for line in stderr.splitlines():
        if line.startswith("import time:"):
            imported.add(line.rsplit("|", 1)[1].strip().split(".")[0])
        elif line.strip():
            lines.append(line)
    return lines, imported
