"""The code's shape: layers that import only downwards (``run/`` nothing of ``study/``, the
library nothing of the suite), no import cycle, and files and functions small enough to read
in one sitting (STYLE.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("estimators", "diffsort_reorder")
MAX_FILE_LINES = 350
MAX_FUNCTION_LINES = 60
# From the bottom up; a module belongs to the layer of the longest name it starts with.
LAYERS = [
    ["estimators"],
    ["diffsort_reorder", "diffsort_reorder.files", "diffsort_reorder.checks",
     "diffsort_reorder.config", "diffsort_reorder.cli", "diffsort_reorder.plotting"],
    ["diffsort_reorder.data", "diffsort_reorder.backbones", "diffsort_reorder.model"],
    ["diffsort_reorder.orders"],
    ["diffsort_reorder.run"],
    ["diffsort_reorder.study"],
    ["diffsort_reorder.bench", "diffsort_reorder.train", "diffsort_reorder.orderings",
     "diffsort_reorder.priors"],
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {
    module_name(p): p
    for package in PACKAGES
    for p in sorted((ROOT / package).rglob("*.py"))
    if "configs" not in p.parts
}


def module_imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports when it is imported (not inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = package.split(".")
            base = parts[: len(parts) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(
                f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in SOURCES
            )
    return {m for m in found if m in SOURCES and m != name}


GRAPH = {name: module_imports(name, path) for name, path in SOURCES.items()}


def layer_of(name: str) -> int:
    matches = [
        (len(prefix), level)
        for level, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if name == prefix or name.startswith(prefix + ".")
    ]
    assert matches, f"{name} is in no layer of tests/test_structure.py"
    return max(matches)[1]


def test_every_import_runs_down_the_layers():
    upward = [
        f"{name} -> {imported}"
        for name, imports in GRAPH.items()
        for imported in imports
        if layer_of(imported) > layer_of(name)
    ]
    assert upward == []


def test_one_run_imports_nothing_of_a_study_and_the_library_nothing_of_the_suite():
    def imports_from(prefix: str, target: str) -> list[str]:
        return [f"{m} -> {i}" for m, imps in GRAPH.items() if m.startswith(prefix)
                for i in imps if i.startswith(target)]  # fmt: skip

    assert imports_from("diffsort_reorder.run", "diffsort_reorder.study") == []
    assert imports_from("estimators", "diffsort_reorder") == []


def test_no_import_cycle():
    """Depth-first search for a back edge among module-level imports."""
    state: dict[str, str] = {}
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for imported in sorted(GRAPH[name]):
            if state.get(imported) == "open":
                cycles.append(" -> ".join([*path[path.index(imported) :], imported]))
            elif imported not in state:
                visit(imported, [*path, imported])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_files_and_functions_read_in_one_sitting(name):
    source = SOURCES[name].read_text()
    assert source.count("\n") <= MAX_FILE_LINES, f"{SOURCES[name]} is over {MAX_FILE_LINES} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_checks_see_what_they_check():
    """The import graph is not empty and knows the seams the tests above rely on."""
    assert "diffsort_reorder.study.study" in GRAPH["diffsort_reorder.study.cli"]
    assert "diffsort_reorder.run.loop" in GRAPH["diffsort_reorder.study.study"]
    assert layer_of("diffsort_reorder.study.storage.postgres") > layer_of("diffsort_reorder.run")
