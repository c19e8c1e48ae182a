"""The package's import graph: no cycles between vl2v's subpackages, and every edge goes down the layers.

Every module under src/vl2v is parsed with ``ast`` (nothing is imported), and every ``vl2v.*`` import in
it -- at module level or inside a function, absolute or relative -- becomes an edge between the top-level
parts of the package (``vl2v.teachers.store`` -> ``teachers``; single modules such as ``errors`` and
``registry`` are parts of their own). A lazy import inside a function is still a dependency, so it
counts too.

Run it as a script to print the graph, its cycles and the edges the layer table does not allow:

    PYTHONPATH=src python tests/test_import_layers.py
"""

from __future__ import annotations

import ast
import functools
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "vl2v"

# The intended layering: part -> the parts it may import. The bottom (errors, registry, utils) first.
# A part that is not listed here (a new subpackage) fails the test until it is given a row.
# Everyone may import the package root itself (``from vl2v import __version__``): it imports nothing heavy.
BOTTOM = {"__init__", "errors", "registry", "utils"}
ALLOWED: dict[str, set[str]] = {
    "errors": {"__init__"},
    "registry": {"__init__", "errors"},
    "utils": {"__init__", "errors", "registry"},
    "configs": set(),  # package data only (profiles.toml)
    "data": BOTTOM,
    "students": BOTTOM,
    # the typed run configuration; it reads a registered dataset's budget for the paper profile
    "config": BOTTOM | {"data", "configs"},
    "teachers": BOTTOM | {"data", "students", "config"},
    "methods": BOTTOM | {"data", "students", "teachers", "config"},
    "runs": BOTTOM | {"data", "students", "teachers", "methods", "config"},
    "training": BOTTOM | {"data", "students", "teachers", "methods", "runs", "config"},
    "evaluation": BOTTOM | {"data", "students", "teachers", "methods", "runs", "training", "config"},
    "serving": BOTTOM | {"data", "students", "teachers", "methods", "runs", "config"},
    "cli": BOTTOM | {"data", "students", "teachers", "methods", "runs", "training", "evaluation", "serving", "config"},
    # `python -m vl2v` is the command line; the package's __init__ stays light (no heavy subpackage).
    "__main__": {"cli"},
    "__init__": set(),  # the package root imports no part of vl2v (`import vl2v` stays instant)
}


def part_of(module: str) -> str | None:
    """``vl2v.teachers.store`` -> ``teachers``; ``vl2v`` -> ``__init__``; anything else -> None."""
    parts = module.split(".")
    if parts[0] != "vl2v":
        return None
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_part(name: str) -> bool:
    return (PKG / name).is_dir() or (PKG / f"{name}.py").is_file()


def imports_in(source: str, mod: str, is_pkg: bool, filename: str = "<src>") -> list[tuple[str, int]]:
    """Every vl2v module the source of module ``mod`` imports, with its line: module level and inside
    functions alike; relative imports are resolved against ``mod``'s package."""
    package = mod if is_pkg else mod.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "vl2v"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from .. import z
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vl2v":
                continue
            if target == "vl2v":  # from vl2v import cli -> the part named, if it is one
                out += [(f"vl2v.{a.name}" if _is_part(a.name) else "vl2v", node.lineno) for a in node.names]
            else:
                out.append((target, node.lineno))
    return out


def imports_of(path: Path) -> list[tuple[str, int]]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py", str(path))


@functools.lru_cache(maxsize=None)  # parsed once per session; the tests only read it
def build_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    """(part -> parts it imports, (part, part) -> the ``file:line -> module`` imports behind that edge)."""
    graph: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PKG.rglob("*.py")):
        src = part_of(module_name(path))
        graph[src]  # every part is a node, even one that imports nothing
        for target, line in imports_of(path):
            dst = part_of(target)
            if dst is None or dst == src:
                continue
            graph[src].add(dst)
            why[(src, dst)].append(f"{path.relative_to(SRC)}:{line} -> {target}")
    return dict(graph), dict(why)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one part (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(sccs)


def elementary_cycles(graph: dict[str, set[str]], limit: int = 100) -> list[list[str]]:
    """Every simple cycle [a, b, ..., a], each once (started at its smallest part); the graph is small."""
    out: list[list[str]] = []
    nodes = sorted(graph)

    def walk(start: str, v: str, path: list[str]) -> None:
        for w in sorted(graph.get(v, ())):
            if len(out) >= limit:
                return
            if w == start:
                out.append(path + [start])
            elif w > start and w not in path:
                walk(start, w, path + [w])

    for s in nodes:
        walk(s, s, [s])
    return sorted(out, key=lambda c: (len(c), c))


def report(graph: dict[str, set[str]], why: dict[tuple[str, str], list[str]]) -> str:
    lines = ["vl2v import graph (part -> parts it imports):"]
    lines += [f"  {p:<11} -> {', '.join(sorted(graph[p])) or '-'}" for p in sorted(graph)]
    cycles = find_cycles(graph)
    lines.append(f"cycles: {len(cycles)}")
    for comp in cycles:
        lines.append(f"  strongly connected: {{{', '.join(comp)}}}; its edges, with the imports behind them:")
        for a in comp:
            for b in sorted(graph[a] & set(comp)):
                lines += [f"    {a} -> {b}: {w}" for w in why[(a, b)]]
    simple = elementary_cycles(graph)
    if simple:
        lines.append(f"simple cycles ({len(simple)}{'+' if len(simple) >= 100 else ''}):")
        lines += [f"  {' -> '.join(c)}" for c in simple]
    bad = disallowed_edges(graph)
    lines.append(f"edges the layer table does not allow: {len(bad)}")
    for a, b in bad:
        for w in why.get((a, b), [f"(no row for {a!r} in ALLOWED)"]):
            lines.append(f"  {a} -> {b}: {w}")
    return "\n".join(lines)


def disallowed_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if b not in ALLOWED.get(a, set()))


# --------------------------------------------------------------------------- the tests
def test_every_part_has_a_layer():
    graph, _ = build_graph()
    missing = sorted(set(graph) - set(ALLOWED))
    assert not missing, f"parts with no row in ALLOWED (give them a layer): {missing}"


def test_layer_table_is_acyclic():
    """The table itself must be a layering: if it allowed a cycle, the graph could have one."""
    assert not find_cycles(ALLOWED), find_cycles(ALLOWED)


def test_relative_and_lazy_imports_are_seen():
    """The parser itself: absolute, relative (from a module and from a package) and function-level imports."""
    src = (
        "import os\n"
        "import vl2v.data.folder\n"
        "from .base import Teacher\n"
        "from ..students import registry\n"
        "from .. import errors\n"
        "def f():\n"
        "    from vl2v.serving.protocol import X\n"
        "    from vl2v import cli\n"
    )
    got = [m for m, _ in imports_in(src, "vl2v.teachers.remote", is_pkg=False)]
    assert got == ["vl2v.data.folder", "vl2v.teachers.base", "vl2v.students", "vl2v.errors",
                   "vl2v.serving.protocol", "vl2v.cli"], got
    assert [m for m, _ in imports_in("from . import base\n", "vl2v.teachers", is_pkg=True)] == ["vl2v.teachers"]
    assert [part_of(m) for m in got] == ["data", "teachers", "students", "errors", "serving", "cli"]
    assert part_of("vl2v") == "__init__" and part_of("torch.nn") is None


def test_no_import_cycles_between_parts():
    graph, why = build_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between vl2v's parts:\n" + report(graph, why)


def test_every_edge_follows_the_layers():
    graph, why = build_graph()
    bad = disallowed_edges(graph)
    assert not bad, "imports against the layer table (ALLOWED):\n" + report(graph, why)


if __name__ == "__main__":
    g, w = build_graph()
    print(report(g, w))
    sys.exit(1 if find_cycles(g) or disallowed_edges(g) else 0)
