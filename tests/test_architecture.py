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
