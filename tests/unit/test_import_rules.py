"""The import rules of ARCHITECTURE.md, read from the code: no cycles between folders, and ``models/``
free of the service and of the DICOM and gRPC libraries.

A node is a folder (``service/archive``, ``models/dcgan``), or a module that stands alone directly in
``service/`` or ``models/`` (``service/config.py``). Every import counts, the ones inside functions too:
an import deferred for start-up time is still a dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("service", "models")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every module ``name`` imports: project modules resolved to the module, others to their top name."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return out


def _node(module: str, modules: dict[str, Path]) -> str:
    path = modules[module]
    folder = path.parent.relative_to(REPO)
    if len(folder.parts) == 1 and path.name != "__init__.py":
        return module  # a module of its own directly in service/ or models/
    return ".".join(folder.parts)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for target in _imports(path, name, modules):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target:
                a, b = _node(name, modules), _node(target, modules)
                if a != b:
                    edges[a].add(b)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles_between_folders():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_models_import_nothing_of_the_service_nor_of_dicom_or_grpc():
    modules = _modules()
    forbidden = ("service", "pydicom", "pynetdicom", "grpc", "highdicom", "synthpacs")
    bad = sorted(
        f"{name} imports {target}"
        for name, path in modules.items() if name.startswith("models")
        for target in _imports(path, name, modules) if target.split(".")[0] in forbidden
    )
    assert not bad, bad


def test_the_archive_knows_no_network_front_end():
    modules = _modules()
    front_ends = ("service.dicom", "service.dicomweb", "service.synthetic", "service.inference", "service.cli", "grpc", "pynetdicom")
    bad = sorted(
        f"{name} imports {target}"
        for name, path in modules.items() if name.startswith("service.archive")
        for target in _imports(path, name, modules) if target.startswith(front_ends)
    )
    assert not bad, bad


def test_the_rules_see_the_imports_they_check():
    edges = _graph()
    assert "service.archive" in edges["service.dicom"] and "service.dicom.fastpath" in edges["service.dicom"]
    assert "models.architectures" in edges["models.train"]
