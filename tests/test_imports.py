"""No import cycles inside the ``visionlab`` package.

Every ``import`` / ``from ... import`` of a visionlab module counts, at module level and
inside functions alike (a lazy import only hides a cycle until the function runs), read
with :mod:`ast` from the sources. Dynamic imports (``importlib.import_module`` of a computed
name, the model registry's discovery) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

import visionlab

PACKAGE_DIR = Path(visionlab.__file__).parent


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """``{module: the package's modules it imports}`` over every source file of the package.

    ``from visionlab.a import b`` is an edge to the module ``visionlab.a.b`` when there is
    one, else to ``visionlab.a`` (whose ``__init__`` defines ``b``); relative imports are
    resolved against the importing module's package.
    """
    files = {_module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in files)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, node.module] if node.module else parts)
                else:
                    base = node.module or ""
                for alias in node.names:
                    if f"{base}.{alias.name}" in files:
                        edges.add(f"{base}.{alias.name}")
                    elif base in files:
                        edges.add(base)
        edges.discard(module)
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def _describe(graph: dict[str, set[str]], cycle: list[str]) -> str:
    edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a] & set(cycle))]
    return "; ".join(edges)


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = import_cycles(graph)
    assert not cycles, "import cycles: " + " | ".join(_describe(graph, c) for c in cycles)


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("import os\n\ndef f():\n    from pkg.sub.b import g\n")
    (pkg / "sub" / "b.py").write_text("from .. import a\nfrom . import c\nfrom pkg import x\n")
    (pkg / "sub" / "c.py").write_text("import pkg.a\n")
    assert import_graph(pkg) == {
        "pkg": {"pkg.sub.b"},
        "pkg.a": {"pkg.sub.b"},  # inside a function
        "pkg.sub": set(),
        "pkg.sub.b": {"pkg.a", "pkg.sub.c", "pkg"},  # relative; `x` is defined by pkg
        "pkg.sub.c": {"pkg.a"},
    }
    assert import_cycles(import_graph(pkg)) == [["pkg", "pkg.a", "pkg.sub.b", "pkg.sub.c"]]


def test_the_leaves_import_nothing_that_imports_them() -> None:
    graph = import_graph()
    assert "visionlab.models.pretrained" in graph["visionlab.models.backbones"]  # in a function
    assert "visionlab.models.backbones" not in graph["visionlab.models.pretrained"]
    assert graph["visionlab.data.problems"] <= {"visionlab.errors"}
