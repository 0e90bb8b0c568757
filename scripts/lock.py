"""Lock files (`make lock`): every dependency pinned to one version, with its sha256 hashes.

- `requirements/image.txt`: what the CPU image (`VARIANT=cpu`) serves with: the project's
  dependencies (ONNX Runtime, no torch) and the `onnx`, `openvino` and `otel` extras, universal
  (one file for CPython 3.11 and 3.12, any platform), so every `PYTHON_IMAGE` installs it with
  `pip install --require-hashes --no-deps`.
- `requirements/image-torch.txt`: the base dependencies and the `onnx`, `otel` and `torch`
  extras (transformers, safetensors and torch's own dependencies; no OpenVINO), for
  `VARIANT=cpu-torch` and `VARIANT=cuda`.
- `requirements/dev.txt`: the same plus the `demo` and `dev` extras, for development.

torch is resolved at `TORCH_VERSION` (the Makefile's TORCH_SPEC) but left out of every file,
with the CUDA-only packages that PyPI's torch pulls in (nvidia-*, triton, cuda-*): which torch
build is right (CPU or a CUDA version) depends on the image variant, so the Dockerfile installs
it pinned by version from the CPU index, a mirror or a local wheelhouse. Its own dependencies
(filelock, sympy, networkx, jinja2, fsspec, typing-extensions) stay in the locks that have it.

A lock is re-resolved keeping the versions it (or, for a new one, dev.txt) already pins where
they still fit (uv's preferences from `--output-file`): `make lock` after a dependency change
moves only what that change needs.

Each file's header records a digest of its inputs (the dependency tables of pyproject.toml and
the torch version); tests/deploy/test_lock.py fails when they no longer agree.

    python -m scripts.lock [--torch-version 2.13.0] [--check]

Needs `uv` (pinned in the dev extra) and an index (PyPI by default; uv reads UV_INDEX_URL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = REPO / "pyproject.toml"
REQUIREMENTS = REPO / "requirements"
# lock file -> the extras it carries (besides the base dependencies)
LOCKS: dict[str, tuple[str, ...]] = {
    "image.txt": ("onnx", "openvino", "otel"),  # VARIANT=cpu: ONNX Runtime + OpenVINO, no torch
    "image-torch.txt": ("onnx", "otel", "torch"),  # VARIANT=cpu-torch and cuda (+ torch)
    "dev.txt": ("demo", "dev", "onnx", "otel", "train"),
}
PYTHON_VERSION = "3.11"  # the oldest pyproject allows; --universal covers the newer ones
# Installed by the Dockerfile on its own (variant-specific), never from the lock.
LEFT_OUT = re.compile(r"^(torch|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)$")
DIGEST_LINE = "# inputs-sha256: "


def inputs_digest(extras: tuple[str, ...], torch_version: str, pyproject: Path = PYPROJECT) -> str:
    """sha256 of what a lock is resolved from: the base dependencies, the extras it carries
    (recursively, as the project references itself in `dev`), and the torch version."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    wanted, todo = set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in wanted:
            continue
        wanted.add(extra)
        for requirement in optional.get(extra, []):
            match = re.fullmatch(rf"{re.escape(project['name'])}\[([a-z0-9,\-]+)\]", requirement)
            if match:
                todo.extend(match.group(1).split(","))
    payload = {
        "build": build_requirements(pyproject),
        "dependencies": project["dependencies"],
        "extras": {name: optional[name] for name in sorted(wanted)},
        "torch": torch_version,
        "python": PYTHON_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def build_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """[build-system].requires: the image installs the project with --no-build-isolation, so
    its build backend (setuptools) comes from the lock too."""
    return list(tomllib.loads(pyproject.read_text())["build-system"]["requires"])


def recorded_digest(lock: Path) -> str | None:
    for line in lock.read_text().splitlines():
        if line.startswith(DIGEST_LINE):
            return line[len(DIGEST_LINE) :].strip()
    return None


def drop_left_out(text: str) -> str:
    """Remove the requirement blocks (a pin, its hash lines, its `# via` comments) of torch and
    the CUDA-only packages."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            name = re.split(r"[=<>!~; \\\[]", line, maxsplit=1)[0].lower()
            skipping = bool(LEFT_OUT.match(name))
        elif line.startswith("#"):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def compile_lock(name: str, extras: tuple[str, ...], torch_version: str) -> str:
    uv = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    if uv is None:
        raise SystemExit("lock: uv not found (pip install uv, or make install-dev)")
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp, "torch.txt")
        constraints.write_text(f"torch=={torch_version}\n")
        build = Path(tmp, "build.txt")
        build.write_text("".join(f"{requirement}\n" for requirement in build_requirements()))
        output = Path(tmp, name)  # seeded with today's pins: uv prefers them
        for previous in (REQUIREMENTS / name, REQUIREMENTS / "dev.txt"):
            if previous.exists():
                output.write_text(previous.read_text())
                break
        command = [uv, "pip", "compile", "pyproject.toml", str(build), "--universal",
                   "--generate-hashes",
                   "--python-version", PYTHON_VERSION, "--no-header", "--quiet",
                   "--constraint", str(constraints), "--output-file", str(output)]  # fmt: skip
        for extra in extras:
            command += ["--extra", extra]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
        compiled = output.read_text() if result.returncode == 0 else ""
        compiled = compiled.replace(f"-r {build}", "pyproject.toml [build-system]")
    if result.returncode != 0:
        raise SystemExit(f"lock: uv pip compile failed for {name}:\n{result.stderr}")
    header = (
        f"# {name}: generated by `make lock` (python -m scripts.lock); do not edit by hand.\n"
        f"# pyproject.toml extras: {', '.join(extras)}; torch {torch_version} resolved, then left\n"
        "# out with the CUDA-only packages (the Dockerfile installs torch per variant).\n"
        f"{DIGEST_LINE}{inputs_digest(extras, torch_version)}\n"
    )
    return header + drop_left_out(compiled)


def torch_version_from_makefile() -> str:
    match = re.search(r"^TORCH_SPEC \?= torch==(\S+)", (REPO / "Makefile").read_text(), re.M)
    if not match:
        raise SystemExit("lock: TORCH_SPEC not found in the Makefile")
    return match.group(1).split("+")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.lock", description=__doc__)
    parser.add_argument("--torch-version", default=None, help="default: the Makefile's")
    parser.add_argument("--check", action="store_true", help="exit 1 if a lock's inputs moved")
    args = parser.parse_args(argv)
    torch_version = args.torch_version or torch_version_from_makefile()
    stale = []
    for name, extras in LOCKS.items():
        path = REQUIREMENTS / name
        if args.check:
            if not path.exists() or recorded_digest(path) != inputs_digest(extras, torch_version):
                stale.append(name)
            continue
        REQUIREMENTS.mkdir(exist_ok=True)
        path.write_text(compile_lock(name, extras, torch_version))
        print(f"lock: wrote {path.relative_to(REPO)}")
    if stale:
        print(f"lock: out of date with pyproject.toml: {', '.join(stale)}; run `make lock`")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
