"""How a run names its sources in `training_info.json` and the model card: as a user would type
them, never as absolute paths of the machine that built it.

An absolute path becomes, in this order of preference: the package-relative name of a file inside
an installed package (`.../site-packages/pkg/x` -> `pkg/x`); relative to the current directory;
relative to the checkout holding this package, or to the folder beside it (`../shared/...`, where
the project keeps shared data); `~/...` under the home directory. Anything else (hub ids,
relative paths) is kept as given.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

_ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = _ROOT if (_ROOT / "pyproject.toml").is_file() else None  # None once installed
_PACKAGE_DIRS = ("site-packages", "dist-packages")


def _relative_to(path: Path, base: Path) -> str | None:
    try:
        return PurePosixPath(path.relative_to(base)).as_posix() or "."
    except ValueError:
        return None


def portable_path(value: str | os.PathLike[str]) -> str:
    """`value` as a user would type it on any machine (see the module docstring)."""
    text = os.fspath(value)
    if not os.path.isabs(text):
        return text
    path = Path(os.path.normpath(text))
    parts = path.parts
    for marker in _PACKAGE_DIRS:
        if marker in parts:
            return PurePosixPath(*parts[parts.index(marker) + 1 :]).as_posix()
    relative = _relative_to(path, Path.cwd().resolve())
    if relative is not None:
        return relative
    if CHECKOUT is not None:
        for base, prefix in ((CHECKOUT, ""), (CHECKOUT.parent, "../")):
            relative = _relative_to(path, base)
            if relative is not None:
                return prefix + relative
    relative = _relative_to(path, Path.home())
    if relative is not None:
        return f"~/{relative}"
    return text


def portable_argument(argument: str) -> str:
    """A command-line argument with its path (bare, or after `--flag=`) made portable."""
    flag, equals, value = argument.partition("=")
    if equals and flag.startswith("-"):
        return f"{flag}={portable_path(value)}"
    return portable_path(argument)


def portable_command(argv: Sequence[str]) -> str:
    """A shell command line for the model card, its paths made portable."""
    return shlex.join(portable_argument(arg) for arg in argv)
