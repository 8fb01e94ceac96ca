"""The dependency rules of docs/architecture.md, enforced: a lower floor never imports a higher one, no two
modules import each other (directly or round a loop), and nothing outside steerlab.cli imports it.

Every import counts, also those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "steerlab"

# Floor of each module (by its longest listed prefix), lowest first. Same floor: imports allowed either way,
# as long as they form no loop.
FLOORS = {
    "steerlab.version": 0,
    "steerlab.errors": 0,
    "steerlab.textio": 0,
    "steerlab.files": 0,
    "steerlab.config": 0,
    "steerlab.data": 0,
    "steerlab.models": 0,
    "steerlab.vector": 0,
    "steerlab.meta": 0,
    "steerlab.sae": 0,
    "steerlab.sae.model": 0,
    "steerlab.sae.formats": 0,
    "steerlab.batching": 1,
    "steerlab.operators": 1,
    "steerlab.positions": 1,
    "steerlab.activations": 2,
    "steerlab.steering": 2,
    "steerlab.ablation": 2,
    "steerlab.conditional": 2,
    "steerlab.strength": 2,
    "steerlab.merging": 2,
    "steerlab.sae.train": 2,
    "steerlab.sae.feature_vector": 2,
    "steerlab.sae.clamp": 2,
    "steerlab.generation": 3,
    "steerlab.methods": 4,
    "steerlab.steers": 5,
    "steerlab.evaluation": 6,
    "steerlab.interop": 6,
    "steerlab.sae.features": 6,
    "steerlab.sae.texts": 6,
    "steerlab.server": 7,
    "steerlab": 8,
    "steerlab.cli": 9,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """steerlab modules that `name` imports, resolving relative imports and `from pkg import submodule`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "steerlab")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "steerlab":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    return {m for m in found if m in known and m != name}


def floor(name: str) -> int:
    best = max((prefix for prefix in FLOORS if name == prefix or name.startswith(prefix + ".")), key=len)
    return FLOORS[best]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_floor(graph):
    for name in graph:
        floor(name)  # raises ValueError (max of nothing) for a module no floor covers


def test_no_module_imports_a_higher_floor(graph):
    upward = sorted(
        f"{a} (floor {floor(a)}) imports {b} (floor {floor(b)})"
        for a, targets in graph.items()
        for b in targets
        if floor(b) > floor(a)
    )
    assert upward == []


def test_nothing_outside_cli_imports_the_cli(graph):
    offenders = sorted(
        a
        for a, targets in graph.items()
        if not (a == "steerlab.cli" or a.startswith("steerlab.cli."))
        and any(b == "steerlab.cli" or b.startswith("steerlab.cli.") for b in targets)
    )
    assert offenders == []


def test_no_import_loops(graph):
    """Tarjan's strongly connected components: any component of two or more modules is a loop."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert loops == []


def test_the_checker_sees_relative_lazy_and_submodule_imports(tmp_path):
    """The rules above are only as good as the import reader; check it on the forms the code uses."""
    known = {"steerlab.cli", "steerlab.cli.common", "steerlab.methods", "steerlab.methods.caa", "steerlab.models"}
    source = tmp_path / "x.py"
    source.write_text(
        "from . import caa\nfrom ..models import load_model\ndef f():\n    from steerlab.cli.common import CLIError\n"
    )
    # read as if it were steerlab/methods/x.py
    found = imports_of("steerlab.methods.x", source, known)
    assert found == {"steerlab.methods.caa", "steerlab.models", "steerlab.cli.common"}
