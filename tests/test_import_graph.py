"""The import graph has no cycle, between packages or between modules, and the core imports no stage.

Built from the source with `ast`, function-local imports included: a cycle hidden inside a function
still means two modules cannot be understood (or tested) one without the other. An edge goes to the
module named: `from curation import dedup` -> curation.dedup, `from curation.dedup import X` ->
curation.dedup, `from curation import X` (X not a module) -> curation.

Layers, each importing only those before it (docs/architecture.md):
distilforge (core) < heldout < curation < training < labeling < decision < app.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["distilforge", "heldout", "curation", "training", "labeling", "decision", "app"]


def modules() -> dict[str, Path]:
    out = {}
    for pkg in LAYERS:
        for f in (REPO / pkg).rglob("*.py"):
            parts = f.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            graph[m] |= {t for t in targets if t in mods and t != m}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_another_that_imports_it_back():
    g = import_graph()
    assert len(g) > 60  # the whole tree was read
    assert cycles(g) == []


def test_packages_import_only_the_layers_below_them():
    upward = sorted(f"{m} -> {t}" for m, ts in import_graph().items() for t in ts
                    if LAYERS.index(t.split(".")[0]) > LAYERS.index(m.split(".")[0]))
    assert upward == []


def test_the_cycle_check_can_fail():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
