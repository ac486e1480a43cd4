"""The package's folders are layers: no module imports from a layer above its own."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "sequencematch"

# layer -> the layers it may import (besides itself)
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "tasks": {"core", "evaluation"},
    "training": {"core", "models"},
    "evaluation": {"core", "models"},
    "apps": {"core", "models", "tasks", "training", "evaluation"},
}


def _imported_layers(path: Path, layer: str) -> set[str]:
    """Layers of ``sequencematch`` that ``path`` imports (relative or absolute)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 2 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 0 and node.module and node.module.startswith("sequencematch."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("sequencematch."):
                    found.add(alias.name.split(".")[1])
    return found - {layer}


def test_every_module_belongs_to_a_layer():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"modules outside the layer folders: {loose}"
    assert {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        ALLOWED
    )


def test_imports_follow_the_layers():
    violations = []
    for layer, allowed in ALLOWED.items():
        for path in (PACKAGE / layer).rglob("*.py"):
            for target in _imported_layers(path, layer) - allowed:
                violations.append(f"{path.relative_to(PACKAGE)} imports {target}")
    assert violations == []
