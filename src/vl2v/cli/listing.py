"""``vl2v list`` and ``vl2v teachers``: what each registry holds (algorithms, students, teachers, datasets).

One printer per registry; ``vl2v data list`` and ``vl2v list datasets`` share
:func:`print_datasets`, ``vl2v list teachers`` is ``vl2v teachers backends``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


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
    from vl2v.data import list_datasets
    from vl2v.data.registry import default_data_root

    base = Path(root) if root else default_data_root()
    print(f"{'name':<16} {'domains':<58} {'classes':>7} {'images':>8}  how to get it")
    for spec in list_datasets():
        how = "vl2v data build" if spec.builder else ("vl2v data download" if spec.downloader else "-")
        n = spec.total_images
        here = "  [present]" if present and (base / spec.subdir).is_dir() else ""
        print(f"{spec.name:<16} {', '.join(spec.domains):<58} {spec.num_classes:>7} {n if n else '?':>8}  {how}{here}")
    print(f"\ndata root: {base}  (set with --root or $VL2V_DATA); any ROOT/domain/class/image folder loads with --data DIR")


def _cmd_list(args: argparse.Namespace) -> int:
    from vl2v.teachers.catalog import render

    what = args.what
    if what in ("algorithms", "all"):
        print_algorithms()
    if what in ("students", "all"):
        print_students()
    if what in ("teachers", "all"):
        print(render("backends").rstrip())
    if what in ("datasets", "all"):
        print_datasets()
    return 0


def _cmd_teachers(args: argparse.Namespace) -> int:
    from vl2v.teachers.catalog import render

    print(render(args.what, args.grep))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # list
    q = sub.add_parser("list", help="list algorithms, students, teachers and datasets")
    q.add_argument("what", nargs="?", default="all", choices=["all", "algorithms", "students", "teachers", "datasets"])
    q.set_defaults(func=_cmd_list)

    # teachers
    q = sub.add_parser("teachers", help="teacher backends, transformers families and the open_clip catalogue",
                       description="List what --teacher accepts: the backends, the Hugging Face transformers "
                       "families (transformers:HUB_ID or a downloaded folder) and every open_clip model:tag, "
                       "with which are white-box (image tower available to VL2V-SD). See docs/teachers.md.")
    q.add_argument("what", nargs="?", default="all", choices=["all", "backends", "transformers", "openclip"])
    q.add_argument("--grep", metavar="TEXT", help="only rows containing TEXT (case-insensitive), e.g. siglip")
    q.set_defaults(func=_cmd_teachers)
