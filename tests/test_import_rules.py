"""Import directions between our top-level packages, read from the source (AST, nothing imported).

    schemas   imports nothing of ours
    worker    imports schemas                        (the product: it ships alone in the image)
    training  imports schemas                        (a CLI package of its own)
    bench, testing, scripts   import schemas, worker, training and testing; never tests
    tests     may import anything of ours but tests
    nobody    imports tests, not even another test module, nor a conftest (fixtures come from
              pytest; shared helpers from testing/)

Every `import x` and `from x import y` counts, at module level or inside a function, relative
imports resolved, and `importlib.import_module("x")` / `__import__("x")` with a literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
OURS = ("schemas", "worker", "training", "bench", "testing", "scripts", "tests")
SUPPORT = {"schemas", "worker", "training", "testing"}
ALLOWED: dict[str, set[str]] = {
    "schemas": set(),
    "worker": {"schemas"},
    "training": {"schemas"},
    "bench": SUPPORT,
    "testing": SUPPORT - {"testing"},
    "scripts": SUPPORT,
    "tests": set(OURS) - {"tests"},
}


def module_name(path: Path) -> str:
    """Dotted module name of a file under REPO (`pkg/__init__.py` -> `pkg`)."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve_from(node: ast.ImportFrom, path: Path) -> list[str]:
    """The modules a `from ... import ...` may name: the base, and base.name for each name
    (a name may be a submodule: `from tests import conftest`)."""
    if node.level:
        package = module_name(path).split(".")
        if path.name != "__init__.py":
            package.pop()  # a module's package
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    names = [".".join(filter(None, [base, a.name])) for a in node.names if a.name != "*"]
    return [base, *names] if base else names


def imports(path: Path, source: str | None = None) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in the file (or in `source`, as if it were that file); a
    `from` import yields its base module and base.name for each imported name."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            for name in resolve_from(node, path):
                yield node.lineno, name
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield node.lineno, node.args[0].value


def source_files() -> Iterator[Path]:
    for top in OURS:
        directory = REPO / top
        if directory.is_dir():
            yield from sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def violations() -> list[str]:
    found: list[str] = []
    for path in source_files():
        relative = path.relative_to(REPO).as_posix()
        importer = relative.split("/", 1)[0]
        seen: set[tuple[int, str]] = set()
        for line, module in imports(path):
            parts = module.split(".")
            top = parts[0]
            if "conftest" in parts and (line, "conftest") not in seen:
                seen.add((line, "conftest"))
                found.append(f"{relative}:{line}: imports a conftest ({module})")
            if top not in OURS or top in ALLOWED[importer] or top == importer != "tests":
                continue
            if (line, top) not in seen:
                seen.add((line, top))
                found.append(f"{relative}:{line}: {importer} imports {top} ({module})")
    return found


def test_import_directions() -> None:
    found = violations()
    assert not found, f"{len(found)} imports against the rules:\n" + "\n".join(found)


def test_the_checker_sees_every_kind_of_import() -> None:
    """The reader itself: relative, nested and literal dynamic imports all count."""
    source = (
        "import training.loop\n"
        "from .. import tests\n"
        "from . import conftest\n"
        "def f():\n"
        "    from bench.runner import run_bench\n"
        "    import importlib\n"
        "    importlib.import_module('testing.kafka')\n"
    )
    found = {module for _, module in imports(REPO / "worker" / "sample.py", source)}
    assert {"training.loop", "tests", "worker.conftest", "bench.runner", "testing.kafka"} <= found


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of `package` it imports, every kind of import counted (a lazy
    import inside a function still makes a cycle: it only moves the failure to run time)."""
    files = {module_name(p): p for p in source_files() if module_name(p).split(".")[0] == package}
    return {
        name: {module for _, module in imports(path) if module in files and module != name}
        for name, path in files.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle in `graph` as a path that ends where it starts (`[a, b, a]`); empty if
    there is none. Depth-first, modules and their imports in sorted order."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return []
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            cycle = visit(imported)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return []

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return []


@pytest.mark.parametrize(
    "package",
    OURS,
)
def test_no_import_cycles_inside_a_package(package: str) -> None:
    """Modules of a package import one another one way: a module that needs a piece of another
    which needs it back takes that piece from a third module both import."""
    cycle = find_cycle(import_graph(package))
    assert not cycle, f"{package} has an import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_sees_a_cycle_through_a_lazy_import() -> None:
    source = "def f():\n    from training.export import resolve_model_dir\n"
    lazy = {module for _, module in imports(REPO / "training" / "evaluate.py", source)}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({**graph, "c": {"d"}}) == []
    assert find_cycle({"training.evaluate": lazy, "training.export": {"training.evaluate"}})


# Inside worker/: the front doors (worker.http) and the operator tools (worker.ops) sit on top of
# the pipeline and the backends; only the composition root (worker.app, worker.cli) wires them
# in. So the pipeline, the backends and the optional parts never import a front door or a tool.
WORKER_TOP = {"worker.http": {"worker.app", "worker.cli"}, "worker.ops": {"worker.cli"}}


def worker_layer_violations() -> list[str]:
    found: list[str] = []
    for path in source_files():
        importer = module_name(path)
        if importer.split(".")[0] != "worker":
            continue
        for line, module in imports(path):
            for package, allowed in WORKER_TOP.items():
                inside = importer == package or importer.startswith(package + ".")
                named = module == package or module.startswith(package + ".")
                if named and not inside and importer not in allowed:
                    found.append(f"{path.relative_to(REPO)}:{line}: {importer} imports {module}")
    return found


def test_only_the_composition_root_imports_front_doors_and_tools() -> None:
    found = worker_layer_violations()
    assert not found, "\n".join(found)
