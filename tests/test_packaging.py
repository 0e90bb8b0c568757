"""The wheel ships only the product: worker (with its default model), schemas, and the training
CLI package; bench/, testing/, scripts/ and tests/ stay in the repository."""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_packages

REPO = Path(__file__).resolve().parent.parent
SHIPPED = {"worker", "schemas", "training"}


def test_wheel_packages_are_the_product_only() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    find = pyproject["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(where=str(REPO), include=find["include"])
    assert {name.split(".")[0] for name in packages} == SHIPPED, packages
    assert "bench" in find_packages(where=str(REPO))  # the include list is what keeps it out
    scripts = pyproject["project"]["scripts"]
    assert {target.partition(".")[0] for target in scripts.values()} <= SHIPPED
