"""The shape of the code: the core does no I/O; dependencies point participants -> coordinator."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE_MAY_IMPORT = {
    "coordinator._core",
    "coordinator.abc",
    "coordinator.errors",
    "coordinator.ids",
    "coordinator.outcomes",
    "coordinator.policy",
    "coordinator.records",
}
CORE_STDLIB = {
    "__future__",
    "collections",
    "dataclasses",
    "enum",
    "json",
    "os",
    "re",
    "time",
    "typing",
}


def imports_of(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def closure(module: str) -> set[str]:
    """Every coordinator module reachable from ``module`` through imports."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = ROOT / (name.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / name.replace(".", "/") / "__init__.py"
        if path.exists():
            todo.extend(i for i in imports_of(path) if i.startswith("coordinator"))
    return seen


def test_the_core_imports_no_client_no_anyio_no_telemetry_no_clock() -> None:
    for path in (ROOT / "coordinator" / "_core").glob("*.py"):
        for name in closure(f"coordinator._core.{path.stem}"):
            assert any(name == ok or name.startswith(ok + ".") for ok in CORE_MAY_IMPORT), (
                f"{path.name} reaches {name}"
            )
            module = ROOT / (name.replace(".", "/") + ".py")
            if module.exists():
                outside = {
                    i.split(".")[0] for i in imports_of(module) if not i.startswith("coordinator")
                }
                assert outside <= CORE_STDLIB, f"{name} imports {outside - CORE_STDLIB}"
    for path in (ROOT / "coordinator" / "_core").glob("*.py"):
        direct = {i.split(".")[0] for i in imports_of(path) if not i.startswith("coordinator")}
        # The core itself never reads a clock: time comes in replies (InDoubtListed.now).
        assert direct <= {"__future__", "collections", "dataclasses", "typing"}, path


def test_the_coordinator_never_imports_participants() -> None:
    for path in (ROOT / "coordinator").rglob("*.py"):
        assert not any(i.startswith("participants") for i in imports_of(path)), path


def test_only_the_compat_module_imports_anyio() -> None:
    for path in list((ROOT / "coordinator").rglob("*.py")) + list(
        (ROOT / "participants").rglob("*.py")
    ):
        if path.name == "_acompat.py":
            continue
        assert not any(i.split(".")[0] == "anyio" for i in imports_of(path)), path
