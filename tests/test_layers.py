"""The layers: the operator and the runtime stand on one shared core and never on each other.

The core is what both sides may import: the API models (`specfleet.api`, the router's
configuration format included), the GPU catalog, the performance model, the speculation
schedule, and how a request is judged for routing (`specfleet.routing`: what the router runs
on every request, in the core so that requests scored offline are judged alike). The operator
(`specfleet`) never imports the runtime (`specfleet_runtime`), so it can change without
shipping the data path; the runtime imports nothing of the operator but the core. Checked on
the source with `ast`, lazy imports inside functions included.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.corpus import ROOT

OPERATOR = ROOT / "operator" / "specfleet"
RUNTIME = ROOT / "runtime" / "specfleet_runtime"
CORE = (
    "specfleet.api",
    "specfleet.catalog",
    "specfleet.perf",
    "specfleet.routing",
    "specfleet.schedule",
)


def imported(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every absolute import in a module; `from a import b` gives `a.b`,
    since `b` may be a module."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def modules(root: Path) -> list[Path]:
    found = sorted(root.rglob("*.py"))
    assert found, f"no modules under {root}"
    return found


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


@pytest.mark.parametrize("path", modules(OPERATOR), ids=lambda p: str(p.relative_to(OPERATOR)))
def test_the_operator_never_imports_the_runtime(path: Path) -> None:
    wrong = [
        f"{where(path, line)} imports {module}"
        for line, module in imported(path)
        if within(module, "specfleet_runtime")
    ]
    assert not wrong, "; ".join(wrong)


@pytest.mark.parametrize("path", modules(RUNTIME), ids=lambda p: str(p.relative_to(RUNTIME)))
def test_the_runtime_imports_only_the_core_of_the_operator(path: Path) -> None:
    wrong = [
        f"{where(path, line)} imports {module}, outside the core {', '.join(CORE)}"
        for line, module in imported(path)
        if within(module, "specfleet") and not any(within(module, core) for core in CORE)
    ]
    assert not wrong, "; ".join(wrong)


def test_an_import_is_seen_however_it_is_written(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from specfleet import api, kube\n"
        "import specfleet.plan\n"
        "def later():\n"
        "    from specfleet_runtime.router import config\n"
        "from . import sibling\n"
    )
    assert [module for _, module in imported(source)] == [
        "specfleet.api",
        "specfleet.kube",
        "specfleet.plan",
        "specfleet_runtime.router.config",
    ]
    assert not within("specfleet_runtime.proxy", "specfleet")
