"""The lock files (requirements/*.txt, `make lock`) agree with pyproject.toml, pin every
dependency with hashes, and are what the image installs (issue 25, defect 4)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

from scripts import lock

REPO = Path(__file__).resolve().parents[2]
# The environment the image is built for by default (Debian bookworm / python:3.11).
ENVIRONMENT = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "extra": "",
}


def pins(path: Path) -> dict[str, tuple[Version, int]]:
    """name -> (pinned version, number of hashes), for the pins that apply to ENVIRONMENT."""
    result: dict[str, tuple[Version, int]] = {}
    current: str | None = None
    for line in path.read_text().splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            requirement = Requirement(line.rstrip(" \\"))
            current = None
            if requirement.marker is None or requirement.marker.evaluate(ENVIRONMENT):
                (specifier,) = requirement.specifier
                assert specifier.operator == "==", line
                current = requirement.name.lower().replace("_", "-")
                assert current not in result, f"{current} pinned twice for one environment"
                result[current] = (Version(specifier.version), 0)
        elif current and line.strip().startswith("--hash=sha256:"):
            version, hashes = result[current]
            result[current] = (version, hashes + 1)
    return result


def direct_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    result = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        for text in optional[extra]:
            requirement = Requirement(text)
            if requirement.name != project["name"]:
                result.append(requirement)
    return result


@pytest.mark.parametrize("name", sorted(lock.LOCKS))
def test_lock_inputs_match_pyproject(name: str) -> None:
    """The digest a lock records is that of today's pyproject.toml and torch version: a
    dependency added, removed or re-ranged without `make lock` fails here."""
    path = REPO / "requirements" / name
    assert path.exists(), f"requirements/{name} missing: run `make lock`"
    expected = lock.inputs_digest(lock.LOCKS[name], lock.torch_version_from_makefile())
    assert lock.recorded_digest(path) == expected, f"requirements/{name} is stale: `make lock`"


def test_digest_moves_when_a_dependency_moves(tmp_path: Path) -> None:
    """The drift check is not blind: editing a floor in a copy of pyproject.toml changes it."""
    original = (REPO / "pyproject.toml").read_text()
    changed = tmp_path / "pyproject.toml"
    changed.write_text(original.replace('"onnxruntime>=1.17"', '"onnxruntime>=1.18"'))
    assert changed.read_text() != original
    extras = lock.LOCKS["image.txt"]
    assert lock.inputs_digest(extras, "2.13.0") != lock.inputs_digest(extras, "2.13.0", changed)
    assert lock.inputs_digest(extras, "2.13.0") != lock.inputs_digest(extras, "2.14.0")


@pytest.mark.parametrize("name", sorted(lock.LOCKS))
def test_every_dependency_is_pinned_with_hashes(name: str) -> None:
    path = REPO / "requirements" / name
    pinned = pins(path)
    assert pinned
    for package, (_, hashes) in pinned.items():
        assert hashes >= 1, f"{package} has no --hash in requirements/{name}"
        assert not lock.LEFT_OUT.match(package), f"{package} belongs to the torch step"
    for requirement in direct_requirements(lock.LOCKS[name]):
        if requirement.marker is not None and not Marker(str(requirement.marker)).evaluate(
            ENVIRONMENT
        ):
            continue
        key = requirement.name.lower().replace("_", "-")
        if key == "torch":
            continue  # installed per variant by the Dockerfile (TORCH_VERSION)
        assert key in pinned, f"{requirement} is not pinned in requirements/{name}"
        version = pinned[key][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements/{name} pins {key}=={version}, outside {requirement}"
        )


TORCH_DEPENDENCIES = ("filelock", "typing-extensions", "sympy", "networkx", "jinja2", "fsspec")


def test_torch_dependencies_stay_in_the_torch_lock() -> None:
    """torch is installed with --no-deps in the cpu-torch image: what it imports must be locked;
    so must the torch backend's transformers and safetensors."""
    pinned = pins(REPO / "requirements" / "image-torch.txt")
    for package in (*TORCH_DEPENDENCIES, "transformers", "safetensors"):
        assert package in pinned, package


def test_the_cpu_image_lock_serves_without_torch() -> None:
    """The cpu variant's lock (issue 26): ONNX Runtime and the tokenizer, nothing only torch or
    its backend needs (transformers, sympy, networkx); the build backend for the wheel."""
    pinned = pins(REPO / "requirements" / "image.txt")
    for package in ("onnxruntime", "tokenizers", "numpy", "aiokafka", "setuptools"):
        assert package in pinned, package
    for package in ("transformers", "safetensors", "sympy", "networkx", "mpmath", "jinja2"):
        assert package not in pinned, f"{package} is in the cpu image's lock"


def test_image_installs_from_the_lock_with_hashes() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r"pip install [^\n]*--require-hashes[^\n]*-r \"\$lock\"", dockerfile)
    assert "lock=requirements/image.txt" in dockerfile
    assert "lock=requirements/image-torch.txt" in dockerfile
    # the project itself adds nothing unpinned, and nothing is upgraded from the index
    assert re.search(r"pip install [^\n]*--no-deps[^\n]*--no-build-isolation", dockerfile)
    assert "--upgrade" not in dockerfile
    assert "pip check" in dockerfile
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^lock:", makefile, re.M)
