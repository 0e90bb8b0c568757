"""How a run names its sources in `training_info.json` and the model card: as a user would type
them, never as absolute paths of the machine that built it.

An absolute path becomes, in this order of preference:
- the package-relative name of a file inside an installed package
  (`.../site-packages/pkg/x` -> `pkg/x`);
- relative to the current directory;
- relative to the checkout holding this package;
- `../shared/...` under the `shared/` folder beside the checkout, where the project keeps its
  data and base models (`../shared/data/jigsaw/train.csv.gz`);
- anywhere else, its name alone, which a reader of the card can match to their own copy: for a
  file, with its content digest (`train.csv.gz (sha256 ...)`), so that the copy can be checked.
  Other folders (a temporary folder, a home directory) are never named: a reader never sees them.
Hub ids and relative paths are kept as given.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

_ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = _ROOT if (_ROOT / "pyproject.toml").is_file() else None  # None once installed
SHARED = "shared"  # the folder beside the checkout that holds the project's data and models
_PACKAGE_DIRS = ("site-packages", "dist-packages")
_CHUNK = 1 << 20


def _relative_to(path: Path, base: Path) -> str | None:
    try:
        return PurePosixPath(path.relative_to(base)).as_posix() or "."
    except ValueError:
        return None


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes, in hex."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _known_place(path: Path) -> str | None:
    """`path` relative to a place a reader knows (see the module docstring), or None."""
    parts = path.parts
    for marker in _PACKAGE_DIRS:
        if marker in parts:
            return PurePosixPath(*parts[parts.index(marker) + 1 :]).as_posix()
    relative = _relative_to(path, Path.cwd().resolve())
    if relative is not None:
        return relative
    if CHECKOUT is None:
        return None
    relative = _relative_to(path, CHECKOUT)
    if relative is not None:
        return relative
    relative = _relative_to(path, CHECKOUT.parent / SHARED)
    return None if relative is None else f"../{SHARED}/{relative}"


def _portable(value: str | os.PathLike[str], *, digest: bool) -> str:
    text = os.fspath(value)
    if not os.path.isabs(text):
        return text
    path = Path(os.path.normpath(text))
    known = _known_place(path)
    if known is not None:
        return known
    if digest and path.is_file():
        return f"{path.name} (sha256 {file_digest(path)})"
    return path.name


def portable_path(value: str | os.PathLike[str]) -> str:
    """`value` as a user would type it on any machine (see the module docstring)."""
    return _portable(value, digest=True)


def portable_argument(argument: str) -> str:
    """A command-line argument with its path (bare, or after `--flag=`) made portable; a path
    outside the known places is named without its digest (the sources name it in full)."""
    flag, equals, value = argument.partition("=")
    if equals and flag.startswith("-"):
        return f"{flag}={_portable(value, digest=False)}"
    return _portable(argument, digest=False)


def portable_command(argv: Sequence[str]) -> str:
    """A shell command line for the model card, its paths made portable."""
    return shlex.join(portable_argument(arg) for arg in argv)


def _named_digest(recorded: str) -> str | None:
    """The digest in a name written as `name (sha256 HEX)`, else None."""
    name, sep, rest = recorded.rpartition(" (sha256 ")
    return rest.rstrip(")") if sep and name and rest.endswith(")") else None


def is_recorded_source(recorded: str | None, path: Path) -> bool:
    """Whether the file `path` is the source a card or training info names as `recorded`
    (`portable_path`'s forms): the same name as a user would type it, the same file where that
    name resolves here (from the current directory or the checkout), or the same bytes as a
    name recorded with its digest."""
    if not recorded or not path.is_file():
        return False
    if recorded == portable_path(path.resolve()):
        return True
    digest = _named_digest(recorded)
    if digest is not None:
        return file_digest(path) == digest
    bases = [Path.cwd(), *([CHECKOUT] if CHECKOUT is not None else [])]
    for base in bases:
        candidate = base / recorded
        if candidate.is_file() and (
            candidate.resolve() == path.resolve() or file_digest(candidate) == file_digest(path)
        ):
            return True
    return False
