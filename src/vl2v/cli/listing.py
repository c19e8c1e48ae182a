"""``vl2v list``: what each registry holds (algorithms, students, teachers, datasets).

One printer per registry; ``vl2v data list`` and ``vl2v list datasets`` share
:func:`print_datasets`, ``vl2v list teachers`` is ``vl2v teacher list backends`` (:mod:`vl2v.cli.teacher`).
``vl2v list --json`` prints the same registries as one JSON object (:func:`list_data`).
Everything goes through ``print`` to ``sys.stdout`` and is flushed before the command
returns, so a closed pipe (``vl2v list | head -1``) raises ``BrokenPipeError`` inside
``main``, where it is handled, rather than at interpreter exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout, alone, flushed (``--json`` of list, report and data check)."""
    print(json.dumps(data, indent=2, default=str, allow_nan=False))
    sys.stdout.flush()


def print_algorithms() -> None:
    from vl2v.methods import list_algorithms

    print("algorithms:")
    for a in list_algorithms():
        needs = ", ".join(k for k, on in (("teacher", a.needs_teacher), ("white-box teacher", a.needs_white_box),
                                          ("no training", not a.needs_training)) if on)
        print(f"  {a.name:<12} {a.summary}" + (f"  [{needs}]" if needs else ""))


def print_students() -> None:
    from vl2v.students import list_students

    print("students (or any timm model as timm:<name>):")
    for s in list_students():
        print(f"  {s.name:<34} {s.feature_dim:>5}-d  {'offline weights' if s.offline_weights else 'weights need internet or --student-weights':<42} {s.summary}")


def print_datasets(root: str | None = None, present: bool = True) -> None:
    data = datasets_data(root)
    print(f"{'name':<16} {'domains':<58} {'classes':>7} {'images':>8}  how to get it")
    for d in data["datasets"]:
        here = "  [present]" if present and d["present"] else ""
        print(f"{d['name']:<16} {', '.join(d['domains']):<58} {d['num_classes']:>7} {d['images'] or '?':>8}  "
              f"{d['get_with'] or '-'}{here}")
    print(f"\ndata root: {data['data_root']}  (set with --root or $VL2V_DATA); any ROOT/domain/class/image folder "
          "loads with --data DIR")


def list_data(what: str = "all", root: str | None = None) -> dict[str, Any]:
    """The registries as data: ``algorithms``, ``students``, ``teachers`` (backends) and ``datasets``
    (``what``: one of them or all)."""
    out: dict[str, Any] = {}
    if what in ("algorithms", "all"):
        from vl2v.methods import list_algorithms

        out["algorithms"] = [{"name": a.name, "summary": a.summary, "needs_teacher": a.needs_teacher,
                              "needs_white_box": a.needs_white_box, "needs_training": a.needs_training}
                             for a in list_algorithms()]
    if what in ("students", "all"):
        from vl2v.students import list_students

        out["students"] = [{"name": s.name, "feature_dim": s.feature_dim, "offline_weights": s.offline_weights,
                            "summary": s.summary} for s in list_students()]
    if what in ("teachers", "all"):
        from vl2v.teachers.registry import list_teachers

        out["teachers"] = [{"name": t.name, "white_box": t.white_box, "offline": t.offline, "summary": t.summary}
                           for t in list_teachers()]
    if what in ("datasets", "all"):
        out.update(datasets_data(root))
    return out


def datasets_data(root: str | None = None) -> dict[str, Any]:
    """The registered datasets (what :func:`print_datasets` prints) and the data root, as data."""
    from vl2v.data import list_datasets
    from vl2v.data.registry import default_data_root

    base = Path(root) if root else default_data_root()
    rows = [{"name": spec.name, "domains": list(spec.domains), "num_classes": spec.num_classes,
             "images": spec.total_images or None,
             "get_with": "vl2v data build" if spec.builder else ("vl2v data download" if spec.downloader else None),
             "present": (base / spec.subdir).is_dir()} for spec in list_datasets()]
    return {"datasets": rows, "data_root": str(base)}


def _cmd_list(args: argparse.Namespace) -> int:
    from vl2v.teachers.catalog import render

    what = args.what
    if args.json:
        print_json(list_data(what))
        return 0
    if what in ("algorithms", "all"):
        print_algorithms()
    if what in ("students", "all"):
        print_students()
    if what in ("teachers", "all"):
        print(render("backends").rstrip())
    if what in ("datasets", "all"):
        print_datasets()
    sys.stdout.flush()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # list
    q = sub.add_parser("list", help="list algorithms, students, teachers and datasets")
    q.add_argument("what", nargs="?", default="all", choices=["all", "algorithms", "students", "teachers", "datasets"])
    q.add_argument("--json", action="store_true", help="print the registries as one JSON object (nothing else on stdout)")
    q.set_defaults(func=_cmd_list)
