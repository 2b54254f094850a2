"""Each module's face is its `__all__`: what other modules, the tests and the benchmarks may use.
Anything reached from outside a module and missing from its `__all__` is an internal leaking
(or a face that needs its name added, on purpose)."""

from __future__ import annotations

import ast
import importlib
from collections import defaultdict
from pathlib import Path

import dlboost_search

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(dlboost_search.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# __main__ has no face: importing it runs the CLI.
MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.stem != "__main__"}


def names_used_from_outside() -> dict[str, dict[str, set[str]]]:
    """module -> name -> the files outside it that use it (`from module import name`, or
    `module.name` on an imported module)."""
    used: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    files = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    files += [*(ROOT / "benchmarks").rglob("*.py")]
    for path in files:
        here = module_name(path) if path.is_relative_to(PACKAGE) else None
        aliases: dict[str, str] = {}  # local name -> our module it stands for
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "dlboost_search"
            ):
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if full in MODULES:
                        aliases[alias.asname or alias.name] = full
                    elif node.module != here:
                        used[node.module][alias.name].add(path.name)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and aliases[node.value.id] != here
                and f"{aliases[node.value.id]}.{node.attr}" not in MODULES
            ):
                used[aliases[node.value.id]][node.attr].add(path.name)
    return used


def test_every_module_declares_its_face():
    for name in MODULES:
        module = importlib.import_module(name)
        assert hasattr(module, "__all__"), f"{name} has no __all__"
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_nothing_outside_a_face_is_used_from_outside():
    leaks = {}
    for name, names in names_used_from_outside().items():
        face = set(importlib.import_module(name).__all__)
        outside = {n: sorted(files) for n, files in names.items() if n not in face}
        if outside:
            leaks[name] = outside
    assert not leaks, f"used from outside, not in the module's __all__: {leaks}"
