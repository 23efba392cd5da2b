"""The core (balancer/, forecast/) does no I/O and never imports adapters/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN_MODULES = {"adapters", "asyncio", "socket", "sqlite3", "aiohttp", "ocpp", "influxdb_client", "subprocess",
                     "urllib", "http", "requests", "os", "time"}
CORE = sorted([*(ROOT / "balancer").rglob("*.py"), *(ROOT / "forecast").rglob("*.py")])


@pytest.mark.parametrize("path", CORE, ids=[str(p.relative_to(ROOT)) for p in CORE])
def test_core_is_pure(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        for name in names:
            root = name.split(".")[0]
            # time.perf_counter measures the planner's own budget; it reads no wall clock.
            if root == "time" and path.name in ("plan.py",):
                continue
            assert root not in FORBIDDEN_MODULES, f"{path.name} imports {name}"
        if isinstance(node, ast.Attribute) and node.attr in ("now", "utcnow", "today") and \
                isinstance(node.value, ast.Name) and node.value.id in ("datetime", "date"):
            raise AssertionError(f"{path.name} reads the clock")
        if isinstance(node, ast.Name) and node.id == "open":
            raise AssertionError(f"{path.name} opens files")


def _module_imports() -> dict[str, set[str]]:
    """Project modules each module imports when it is loaded (not under TYPE_CHECKING, not in functions)."""
    paths = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for top in ("balancer", "forecast", "adapters") for p in (ROOT / top).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        found: set[str] = set()
        for stmt in ast.parse(path.read_text()).body:
            if isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.dump(stmt.test):
                continue
            if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for node in ast.walk(stmt):
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found.update(f"{node.module}.{a.name}" for a in node.names)
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def test_no_import_cycles() -> None:
    """A cycle makes import order matter and hides which layer owns what (issue 12)."""
    graph = _module_imports()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, "import cycle: " + " -> ".join([*path[path.index(dep):], dep])
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = 2

    assert "adapters.ocpp.server" in graph  # the walk sees the adapters
    for module in sorted(graph):
        if module not in state:
            visit(module)
