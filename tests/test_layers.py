"""The package's folders are layers: no module imports from a layer above its own, and no
module imports itself back through a circle of other modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "sequencematch"

# layer -> the layers it may import (besides itself)
ALLOWED = {
    "storage": set(),
    "core": set(),
    "models": {"storage", "core"},
    "tasks": {"storage", "core", "evaluation"},
    "training": {"storage", "core", "models"},
    "evaluation": {"storage", "core", "models"},
    "apps": {"storage", "core", "models", "tasks", "training", "evaluation"},
}


def _module_name(path: Path) -> str:
    """``sequencematch.tasks.base`` for ``.../sequencematch/tasks/base.py``."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Modules of ``sequencematch`` that ``path`` imports, relative or absolute: every import
    statement counts, at module level, inside functions and under ``TYPE_CHECKING`` alike.
    ``from package import name`` counts ``package.name`` where that is a module; the parent
    packages Python runs on the way are not counted (their ``__init__`` imports nothing of
    the layers below them, the top one aside)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                if f"{module}.{alias.name}" in MODULES:
                    found.add(f"{module}.{alias.name}")
                elif module in MODULES:
                    found.add(module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in MODULES}
    return found - {name}


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None


def test_every_module_belongs_to_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside the layer folders: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        ALLOWED
    )


def test_imports_follow_the_layers():
    violations = []
    for module, targets in GRAPH.items():
        layer = _layer(module)
        if layer is None:
            continue  # the package's own __init__ (the public API) may import any layer
        for target in sorted(targets):
            if _layer(target) not in ALLOWED[layer] | {layer}:
                violations.append(f"{module} imports {target}")
    assert violations == []


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_import_circles():
    assert _circles(GRAPH) == []


def test_circle_finder_sees_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []
