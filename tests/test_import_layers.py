"""The package's import graph: no cycles between vl2v's subpackages, and every edge goes down the layers.

Every module under src/vl2v is parsed with ``ast`` (nothing is imported), and every ``vl2v.*`` import in
it -- at module level or inside a function, absolute or relative -- becomes an edge between the top-level
parts of the package (``vl2v.teachers.store`` -> ``teachers``; single modules such as ``errors`` and
``registry`` are parts of their own). A lazy import inside a function is still a dependency, so it
counts too.

Within one part, the same imports between its files (modules) must not go round in a circle either
(``runs.layout`` -> ``runs.summary`` -> ``runs.layout``): a circle hidden by moving one import into a
function is still a circle. ``from vl2v.runs import layout`` counts as importing the file ``runs/layout.py``;
an import of the package itself (``from vl2v.runs import RunDir``) as importing its ``__init__.py``. Known
circles that are being broken elsewhere are listed in ``KNOWN_FILE_CYCLES``, reported but allowed; an entry
there that no longer names a real circle fails, so it is removed once fixed.

Run it as a script to print the graph, its cycles and the edges the layer table does not allow:

    PYTHONPATH=src python tests/test_import_layers.py
"""

from __future__ import annotations

import ast
import functools
import sys
import warnings
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
    # reports of finished runs (results.md, tables, HTML report, figures): they read run records, train nothing
    "evaluation": BOTTOM | {"data", "students", "teachers", "methods", "runs", "config"},
    # running experiments (setup, plan, run, worker processes, sweeps); writes results.md with evaluation's text
    "experiment": BOTTOM | {"data", "students", "teachers", "methods", "runs", "training", "evaluation", "config"},
    "serving": BOTTOM | {"data", "students", "teachers", "methods", "runs", "config"},
    "cli": BOTTOM | {"data", "students", "teachers", "methods", "runs", "training", "evaluation", "experiment",
                     "serving", "config"},
    # `python -m vl2v` is the command line; the package's __init__ stays light (no heavy subpackage).
    "__main__": {"cli"},
    "__init__": set(),  # the package root imports no part of vl2v (`import vl2v` stays instant)
}

# Circles between the files of one part that are known and being broken (by their owners) elsewhere: each
# entry is the exact set of modules of one strongly connected component of the file graph. The test reports
# them (a warning) instead of failing; an entry that is no longer such a component fails the test, so it is
# removed (or corrected) when its circle is broken or grows.
KNOWN_FILE_CYCLES: list[frozenset[str]] = []  # none now: protocol/parallel and export/predict were broken


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


def from_target(node: ast.ImportFrom, package: str) -> str:
    """The module a ``from X import ...`` names, relative imports (``from .x``, ``from ..``) resolved against
    ``package``."""
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_in(source: str, mod: str, is_pkg: bool, filename: str = "<src>") -> list[tuple[str, int]]:
    """Every vl2v module the source of module ``mod`` imports, with its line: module level and inside
    functions alike; relative imports are resolved against ``mod``'s package."""
    package = mod if is_pkg else mod.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "vl2v"]
        elif isinstance(node, ast.ImportFrom):
            target = from_target(node, package)
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


@functools.lru_cache(maxsize=None)
def all_modules() -> frozenset[str]:
    return frozenset(module_name(p) for p in PKG.rglob("*.py"))


def file_imports_in(source: str, mod: str, is_pkg: bool, modules: frozenset[str], filename: str = "<src>"
                    ) -> list[tuple[str, int]]:
    """Like :func:`imports_in`, but each import resolved to the file (module) it loads: ``from vl2v.runs import
    layout`` -> ``vl2v.runs.layout``; ``from vl2v.runs import RunDir`` -> ``vl2v.runs`` (its ``__init__``);
    ``import vl2v.a.b`` -> the longest prefix that is a module."""
    package = mod if is_pkg else mod.rpartition(".")[0]
    out: list[tuple[str, int]] = []

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "vl2v" and (m := known(a.name)):
                    out.append((m, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            target = from_target(node, package)
            if target.split(".")[0] != "vl2v":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                m = sub if sub in modules else known(target)
                if m:
                    out.append((m, node.lineno))
    return out


@functools.lru_cache(maxsize=None)
def build_file_graph() -> tuple[dict[str, set[str]], dict[tuple[str, str], list[str]]]:
    """(module -> modules of the same part it imports, (module, module) -> the ``file:line`` imports behind it).

    Only edges inside one part: edges between parts are :func:`build_graph`'s. Module level and inside
    functions alike (``ast.walk`` visits function bodies)."""
    modules = all_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PKG.rglob("*.py")):
        src = module_name(path)
        graph[src]
        for dst, line in file_imports_in(path.read_text(), src, path.name == "__init__.py", modules, str(path)):
            if dst == src or part_of(dst) != part_of(src):
                continue
            graph[src].add(dst)
            if (w := f"{path.relative_to(SRC)}:{line}") not in why[(src, dst)]:  # one per line, not per name
                why[(src, dst)].append(w)
    return dict(graph), dict(why)


def file_cycles() -> tuple[list[list[str]], list[list[str]]]:
    """(the circles between files not in KNOWN_FILE_CYCLES, the known ones), each a strongly connected component."""
    comps = find_cycles(build_file_graph()[0])
    known = [c for c in comps if frozenset(c) in KNOWN_FILE_CYCLES]
    return [c for c in comps if frozenset(c) not in KNOWN_FILE_CYCLES], known


def file_cycles_report(comps: list[list[str]]) -> str:
    graph, why = build_file_graph()
    lines = []
    for comp in comps:
        lines.append(f"  {{{', '.join(comp)}}}; its edges, with the imports behind them:")
        for a in comp:
            for b in sorted(graph[a] & set(comp)):
                lines.append(f"    {a} -> {b}: {', '.join(why[(a, b)])}")
    return "\n".join(lines)


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
    new_file, known_file = file_cycles()
    lines.append(f"circles between the files of one part: {len(new_file)} (+ {len(known_file)} known, allowed)")
    if new_file:
        lines.append(file_cycles_report(new_file))
    if known_file:
        lines.append("  known (KNOWN_FILE_CYCLES):")
        lines.append(file_cycles_report(known_file))
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


def test_file_imports_are_resolved_to_files():
    """``from PKG import MODULE`` is an edge to that file; ``from PKG import NAME`` to the package's __init__;
    relative and function-level imports alike."""
    modules = frozenset({"vl2v.runs", "vl2v.runs.layout", "vl2v.runs.summary", "vl2v.teachers",
                         "vl2v.teachers.lit", "vl2v.errors"})
    src = (
        "from vl2v.runs import layout, RunDir\n"
        "from . import summary\n"
        "import vl2v.teachers.lit\n"
        "def f():\n"
        "    from .summary import run_summary\n"
        "    from vl2v.errors import ConfigError\n"
    )
    got = [m for m, _ in file_imports_in(src, "vl2v.runs.layout", False, modules)]
    assert got == ["vl2v.runs.layout", "vl2v.runs", "vl2v.runs.summary", "vl2v.teachers.lit", "vl2v.runs.summary",
                   "vl2v.errors"], got


def test_file_cycles_are_found_inside_functions_too():
    """The file graph sees a circle hidden by a function-level import (the shape of the old runs/layout <->
    runs/summary circle)."""
    modules = frozenset({"vl2v.runs.layout", "vl2v.runs.summary"})
    layout = "def summary(self):\n    from vl2v.runs.summary import run_summary\n"
    summary = "from vl2v.runs.layout import RunDir\n"
    graph = {"vl2v.runs.layout": {m for m, _ in file_imports_in(layout, "vl2v.runs.layout", False, modules)},
             "vl2v.runs.summary": {m for m, _ in file_imports_in(summary, "vl2v.runs.summary", False, modules)}}
    assert find_cycles(graph) == [["vl2v.runs.layout", "vl2v.runs.summary"]]


def test_no_import_cycles_between_files_of_a_part():
    new, known = file_cycles()
    for comp in known:
        warnings.warn(f"known import circle between files (KNOWN_FILE_CYCLES): {' <-> '.join(comp)}", stacklevel=1)
    assert not new, "import circles between the files of one part:\n" + file_cycles_report(new)


def test_known_file_cycles_are_still_real():
    """Each KNOWN_FILE_CYCLES entry must be exactly one circle (strongly connected component) of the file graph:
    once it is broken (or grows), the entry is removed (or corrected)."""
    comps = {frozenset(c) for c in find_cycles(build_file_graph()[0])}
    stale = [sorted(k) for k in KNOWN_FILE_CYCLES if k not in comps]
    assert not stale, f"KNOWN_FILE_CYCLES entries that are no longer a circle of the file graph (remove them): {stale}"


if __name__ == "__main__":
    g, w = build_graph()
    print(report(g, w))
    sys.exit(1 if find_cycles(g) or disallowed_edges(g) or file_cycles()[0] else 0)
