"""npm packages for tests that drive the worker with a JavaScript client from the registry.

`npm_install` installs pinned packages into a folder the caller owns (a cache folder kept
between runs); `NpmUnavailable` says why it could not (no `npm`, no registry), so that a test can
skip with that reason instead of passing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

# perspective-api-client: the npm client of the Perspective API (it posts with the shared axios)
PERSPECTIVE_CLIENT = {"perspective-api-client": "3.1.0"}


class NpmUnavailable(RuntimeError):
    """npm is missing or the install failed; the message says which."""


def npm_install(directory: Path, packages: dict[str, str], timeout: float = 300) -> Path:
    """`npm install` the pinned `packages` into `directory` (done once: a second call with the
    same packages reuses it); returns its `node_modules`."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise NpmUnavailable("`npm` and `node` are not on PATH (install Node.js 18+)")
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "moderation-test-clients", "private": True, "dependencies": packages}
    stamp = directory / ".installed.json"
    modules = directory / "node_modules"
    if stamp.is_file() and json.loads(stamp.read_text()) == manifest and modules.is_dir():
        return modules
    (directory / "package.json").write_text(json.dumps(manifest, indent=2) + "\n")
    try:
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=directory, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise NpmUnavailable(f"npm install did not finish in {timeout:.0f}s") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise NpmUnavailable(f"npm install failed ({result.returncode}): {' / '.join(tail)}")
    stamp.write_text(json.dumps(manifest))
    return modules
