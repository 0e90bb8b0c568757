"""The README's layout tables keep step with the tree, read at run time.

The paths named are the backticked ones in the first cell of each table row of the README's
"Layout" section, relative to the repository root (a trailing `/` marks a folder). Required:
every tracked top-level entry; every module of `worker/`, recursively through its
subpackages, and every other folder in it (such as `worker/default_model/`); every script of
`scripts/`; every page of `docs/`. Every path named must exist. So a module added without a
row, or a row left behind by a move, fails here.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

SCRIPT_SUFFIXES = {".py", ".sh"}
SKIPPED = {"__init__.py", "__pycache__"}


def layout_section(readme: str) -> str:
    """The text from the `## Layout` heading to the next `## ` heading."""
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", readme, re.MULTILINE | re.DOTALL)
    if match is None:
        raise ValueError("README.md has no '## Layout' section")
    return match.group(1)


def named_paths(readme: str) -> set[str]:
    """Backticked paths in the first cell of each table row of the layout section."""
    names: set[str] = set()
    for line in layout_section(readme).splitlines():
        if not line.startswith("|"):
            continue
        first_cell = line.split("|")[1]
        names |= {name.rstrip("/") for name in re.findall(r"`([^`]+)`", first_cell)}
    return names


def tracked_top_level(root: Path) -> set[str]:
    """Top-level entries git tracks; outside a git checkout, those not matched by .gitignore."""
    try:
        toplevel = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        if Path(toplevel).resolve() == root.resolve():
            files = subprocess.run(
                ["git", "-C", str(root), "ls-files", "-z"],
                capture_output=True, text=True, check=True,
            ).stdout.split("\0")  # fmt: skip
            return {name.split("/")[0] for name in files if name}
    except (OSError, subprocess.CalledProcessError):
        pass
    ignore = root / ".gitignore"
    patterns = [
        line.strip().strip("/")
        for line in (ignore.read_text().splitlines() if ignore.is_file() else [])
        if line.strip() and not line.startswith("#")
    ]
    return {
        entry.name
        for entry in root.iterdir()
        if entry.name != ".git" and not any(fnmatch.fnmatch(entry.name, p) for p in patterns)
    }


def _package_entries(folder: Path, root: Path) -> Iterable[str]:
    """Modules of a package and its subpackages, and its other folders (data), as paths."""
    for entry in sorted(folder.iterdir()):
        if entry.name in SKIPPED or entry.name.startswith("."):
            continue
        if entry.is_dir() and (entry / "__init__.py").is_file():
            yield from _package_entries(entry, root)
        elif entry.is_dir() or entry.suffix == ".py":
            yield entry.relative_to(root).as_posix()


def required_paths(root: Path, top_level: Iterable[str]) -> set[str]:
    """What the layout tables must name, read from the tree."""
    required = set(top_level)
    if (root / "worker").is_dir():
        required |= set(_package_entries(root / "worker", root))
    if (root / "scripts").is_dir():
        required |= {
            entry.relative_to(root).as_posix()
            for entry in (root / "scripts").iterdir()
            if entry.is_file() and entry.suffix in SCRIPT_SUFFIXES and entry.name not in SKIPPED
        }
    if (root / "docs").is_dir():
        required |= {entry.relative_to(root).as_posix() for entry in (root / "docs").glob("*.md")}
    return required


def layout_problems(root: Path, readme: str, top_level: Iterable[str]) -> list[str]:
    named = named_paths(readme)
    missing = sorted(required_paths(root, top_level) - named)
    stale = sorted(name for name in named if not (root / name).exists())
    return [f"no row in README.md's layout for `{path}`" for path in missing] + [
        f"README.md's layout names `{path}`, which does not exist" for path in stale
    ]


def test_the_readme_layout_names_the_tree_and_nothing_else() -> None:
    problems = layout_problems(REPO, README.read_text(), tracked_top_level(REPO))
    assert not problems, "\n".join(problems)


def test_the_layout_names_every_worker_module_and_every_doc_by_its_path() -> None:
    named = named_paths(README.read_text())
    for path in ("worker/pipeline/consume.py", "worker/backends/cuda_graphs.py",
                 "worker/pipeline/decode.py", "worker/pipeline/records.py", "worker/default_model",
                 "scripts/gpu_check.sh", "scripts/gpu_wheels.sh", "scripts/settings_table.py",
                 ".ci", "docs/benchmarks.md", "docs/RELIABILITY.md", "CHANGELOG.md"):  # fmt: skip
        assert path in named


README_OF_A_SMALL_TREE = """# x

## Layout

| path | what |
|---|---|
| `worker/`, `docs/` | the service; the docs |
| `worker/app.py` | front door |
| `worker/pipeline/consume.py` | the intake (moved into a subpackage) |
| `docs/guide.md` | a page |

## Next
| `worker/ignored.py` | a table of another section names nothing |
"""


def _small_tree(root: Path) -> None:
    for path in ("worker/__init__.py", "worker/app.py", "worker/pipeline/__init__.py",
                 "worker/pipeline/consume.py", "docs/guide.md"):  # fmt: skip
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("")
    (root / "worker" / "__pycache__").mkdir()


def test_a_module_added_without_a_row_and_a_row_left_behind_both_fail(tmp_path: Path) -> None:
    _small_tree(tmp_path)
    top = ["worker", "docs"]
    assert layout_problems(tmp_path, README_OF_A_SMALL_TREE, top) == []

    (tmp_path / "worker" / "pipeline" / "batching.py").write_text("")
    (tmp_path / "worker" / "default_model").mkdir()
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "check.sh").write_text("")
    (tmp_path / "docs" / "new.md").write_text("")
    assert layout_problems(tmp_path, README_OF_A_SMALL_TREE, [*top, "scripts"]) == [
        "no row in README.md's layout for `docs/new.md`",
        "no row in README.md's layout for `scripts`",
        "no row in README.md's layout for `scripts/check.sh`",
        "no row in README.md's layout for `worker/default_model`",
        "no row in README.md's layout for `worker/pipeline/batching.py`",
    ]

    (tmp_path / "worker" / "app.py").unlink()
    assert "README.md's layout names `worker/app.py`, which does not exist" in layout_problems(
        tmp_path, README_OF_A_SMALL_TREE, top
    )


def test_outside_a_git_checkout_the_top_level_is_the_tree_less_gitignore(tmp_path: Path) -> None:
    _small_tree(tmp_path)
    (tmp_path / ".gitignore").write_text("# comment\nbuild/\n*.egg-info/\n")
    for name in ("build", "x.egg-info", ".git"):
        (tmp_path / name).mkdir()
    assert tracked_top_level(tmp_path) == {"worker", "docs", ".gitignore"}
