"""The package's import structure: no cycles, every module importable alone, the layers' rules.

The import graph counts every import of a ``cycleqd`` module: at module level, under
``TYPE_CHECKING`` and inside functions (a lazy import that closes a cycle still ties the two modules
together).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "cycleqd").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The cycleqd modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_back() -> None:
    assert _cycles(GRAPH) == []


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        ("cycleqd.evaluation", ("cycleqd.qd", "cycleqd.engine", "cycleqd.operators")),
        ("cycleqd.qd", ("cycleqd.engine", "cycleqd.operators", "cycleqd.evaluation", "cycleqd.weights")),
        ("cycleqd.operators", ("cycleqd.qd", "cycleqd.engine", "cycleqd.evaluation")),
        ("cycleqd.weights", ("cycleqd.qd", "cycleqd.engine", "cycleqd.evaluation", "cycleqd.operators")),
    ],
)
def test_layers_import_only_what_lies_below(layer: str, forbidden: tuple[str, ...]) -> None:
    bad = sorted(
        f"{name} imports {target}"
        for name, targets in GRAPH.items()
        if name == layer or name.startswith(layer + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    )
    assert bad == []


def test_every_module_imports_on_its_own() -> None:
    # One interpreter; before each module the cycleqd modules imported so far are forgotten, so each
    # import starts from nothing of the package (third-party libraries stay loaded: that is speed only).
    # A module whose optional third-party dependency is missing here is reported as skipped.
    code = f"""
import importlib, json, sys, traceback
names = {sorted(m for m in MODULES if m != "cycleqd.__main__")!r}  # __main__ runs the command line
out = {{}}
for name in names:
    for loaded in [m for m in sys.modules if m == "cycleqd" or m.startswith("cycleqd.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
        out[name] = "ok"
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        out[name] = "ok" if missing and not missing.startswith("cycleqd") else traceback.format_exc()
    except BaseException:  # a module that exits or raises on import
        out[name] = traceback.format_exc()
print(json.dumps(out))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failed = {name: err for name, err in results.items() if err != "ok"}
    assert failed == {}
