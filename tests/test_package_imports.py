"""The package's import graph: no cycles, counting imports inside functions too.

A module imports another when any ``import``/``from ... import`` names it, at module level or inside a function
(a lazy import hides a cycle at import time, not in the design); imports under ``if TYPE_CHECKING:`` do not count.
``from pkg import name`` depends on ``pkg.name`` when that is a module, else on the package ``pkg`` itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "d2lightning"


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """``{module: the package modules it imports}``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        skipped = _type_checking_nodes(tree)
        edges: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges.update(t for t in targets if t in modules and t != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
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
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    # d2lightning/__init__.py imports D2LightningModule inside its module __getattr__
    assert "d2lightning.engine.module" in graph["d2lightning"]


def test_the_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_layers_point_down() -> None:
    """utils, checkpoint, solver and config never import the engine; the engine core never imports slurm or the CLI."""
    graph = import_graph()
    low = ("d2lightning.utils", "d2lightning.checkpoint", "d2lightning.solver", "d2lightning.config")
    engine_core = (
        "d2lightning.engine.lightning._private",
        "d2lightning.engine.lightning.run",
        "d2lightning.engine.hook_base",
        "d2lightning.engine.lightning.trainer_module",
        "d2lightning.engine.lightning.trainer_factory",
        "d2lightning.engine.trainer_base",
        "d2lightning.engine.simple_trainer",
    )
    wrong = [
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if (module.startswith(low) and target.startswith("d2lightning.engine"))
        or (module in engine_core and target.startswith(("d2lightning.slurm", "d2lightning.cli")))
    ]
    assert wrong == []
