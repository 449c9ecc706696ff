"""The packages' import graph, read from the source with `ast`: no cycles (imports at module level and
inside functions alike), and data_pipelines never imports mvlm_jax."""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mvlm_jax", "data_pipelines")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> nx.DiGraph:
    """module -> every module of PACKAGES it imports anywhere in its body (package `__init__`s run by a
    dotted import are not edges: they are not what the importing code asked for)."""
    files = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, `level - 1` packages up
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import module` imports that module; `from module import name` the module itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            graph.add_edges_from((name, t) for t in targets if t in files and t != name)
    return graph


def test_no_import_cycles_and_data_pipelines_stands_alone():
    graph = import_graph()
    assert graph.number_of_edges() > 100 and "mvlm_jax.edge.session" in graph  # the walk sees the package
    assert ("mvlm_jax.edge.session", "mvlm_jax.generate.stream") in graph.edges  # function- and module-level
    cycles = list(nx.simple_cycles(graph, length_bound=12))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + c[:1]) for c in cycles[:10])
    leaks = [(a, b) for a, b in graph.edges if a.startswith("data_pipelines") and b.startswith("mvlm_jax")]
    assert not leaks, f"data_pipelines imports mvlm_jax: {leaks}"
