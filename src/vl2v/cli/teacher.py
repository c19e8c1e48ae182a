"""``vl2v teacher``: everything about teachers under one command.

* ``vl2v teacher list [all|backends|transformers|openclip] [--grep TEXT]``: what ``--teacher`` accepts
  (:mod:`vl2v.teachers.catalog`);
* ``vl2v teacher build NAME``: train an offline teacher from pinned registry packages
  (:mod:`vl2v.teachers.lit_build`).

``vl2v teachers`` (the former listing command) still works as a hidden, deprecated alias of
``vl2v teacher list``: same options and output, plus a one-line note on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vl2v.cli.common import CLIError

LIST_DESCRIPTION = ("List what --teacher accepts: the backends, the Hugging Face transformers families "
                    "(transformers:HUB_ID or a downloaded folder) and every open_clip model:tag, with which are "
                    "white-box (image tower available to VL2V-SD). See docs/teachers.md.")


def _add_list_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("what", nargs="?", default="all", choices=["all", "backends", "transformers", "openclip"])
    q.add_argument("--grep", metavar="TEXT", help="only rows containing TEXT (case-insensitive), e.g. siglip")


def _cmd_list(args: argparse.Namespace) -> int:
    from vl2v.teachers.catalog import render

    print(render(args.what, args.grep))
    sys.stdout.flush()
    return 0


def _cmd_teachers_alias(args: argparse.Namespace) -> int:
    print("vl2v: `vl2v teachers` is deprecated: use `vl2v teacher list` (same options and output)", file=sys.stderr)
    return _cmd_list(args)


#: BuildConfig field -> the `vl2v teacher build` flag that sets it (error messages name the flag)
BUILD_FLAGS = {"epochs": "--epochs", "beta": "--beta", "hidden": "--hidden", "beta_confident": "--beta-confident",
               "novelty_width": "--novelty-width", "beta_far": "--beta-far", "views": "--views"}


def _cmd_build(args: argparse.Namespace) -> int:
    from vl2v.config import validated
    from vl2v.teachers.lit_build import BuildConfig, build_teacher, format_metrics, format_photo

    if args.epochs is not None and args.epochs < 1:
        raise CLIError("--epochs must be at least 1")
    if args.beta is not None and not 0.0 <= args.beta <= 1.0:
        raise CLIError("--beta must be in [0, 1]")
    if args.beta_confident is not None and not 0.0 <= args.beta_confident <= 1.0:
        raise CLIError("--beta-confident must be in [0, 1]")
    if args.novelty_width is not None and args.novelty_width <= 0:
        raise CLIError("--novelty-width must be > 0")
    over = {k: v for k, v in (("epochs", args.epochs), ("beta", args.beta), ("hidden", args.hidden),
                              ("beta_confident", args.beta_confident), ("novelty_width", args.novelty_width))
            if v is not None}
    if args.beta_far is not None:
        if args.beta_far.lower() == "none":
            over["beta_far"] = None
        else:
            try:
                far = float(args.beta_far)
            except ValueError:
                raise CLIError(f"--beta-far takes a number in [0, 1] or 'none', got {args.beta_far!r}") from None
            if not 0.0 <= far <= 1.0:
                raise CLIError("--beta-far must be in [0, 1] (or 'none')")
            over["beta_far"] = far
    if args.views:
        bad = sorted(set(args.views) - {"orig", "line"})
        if bad or "orig" not in args.views:
            raise CLIError(f"--views takes orig (required) and line, got {' '.join(args.views)}")
        over["views"] = tuple(args.views)
    cfg = validated(BuildConfig, over, what="vl2v teacher build", labels=BUILD_FLAGS)
    folder = build_teacher(args.name, out_dir=Path(args.out) if args.out else None, config=cfg, force=args.force,
                           benchmark=Path(args.benchmark) if args.benchmark else None, workers=args.workers,
                           benchmark_check=not args.no_benchmark_check, photo_validation=not args.no_photo_validation)
    import json

    man = json.loads((folder / "manifest.json").read_text("utf-8"))
    near = man.get("near_duplicate_check") or {}
    if "dropped_icons" in near:
        print(f"benchmark check: {near['dropped_icons']} training icons dropped as near-duplicates of OfflinePACS "
              f"images (listed in {folder / 'manifest.json'}, near_duplicate_check)")
    else:
        print("benchmark check skipped by flag (--no-benchmark-check): the training icons were not compared with "
              "OfflinePACS")
    if man.get("validation"):
        print(f"held-out concepts ({man['validation']['candidates']} candidate captions):")
        print(format_metrics(man["validation"]))
    if man.get("photo_validation"):
        print("photo validation (qABCs pictures, never trained on):")
        print(format_photo(man["photo_validation"]))
    print(f"built {folder}: use it with --teacher lit:{args.name}" + (" (or --teacher lit)" if args.name == "lit" else ""))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("teacher", help="list teacher backends and catalogues; build offline teachers (LiT)",
                       description="List what --teacher accepts (list), or build an offline teacher from pinned "
                       "registry packages (build).")
    tsub = t.add_subparsers(dest="teacher_command", metavar="SUBCOMMAND", parser_class=type(t))
    q = tsub.add_parser("list", help="teacher backends, transformers families and the open_clip catalogue",
                        description=LIST_DESCRIPTION)
    _add_list_args(q)
    q.set_defaults(func=_cmd_list)
    b = tsub.add_parser("build", help="fetch the pinned icon sets and train the LiT teacher NAME",
                        description="Fetch the pinned icon packages (npm pack, sha256-checked), render (icon, caption) "
                        "pairs, check them against a built OfflinePACS (same pixels abort; near-duplicates are dropped), "
                        "train a head on the locked EfficientNet-Lite2 tower against locked MiniLM caption embeddings and write "
                        "~/.cache/vl2v/teachers/NAME (manifest.json + head.safetensors). Then: --teacher lit:NAME.")
    b.add_argument("name", help="teacher name (letters, digits, '-', '_'); 'lit' is what --teacher lit loads")
    b.add_argument("--force", action="store_true", help="rebuild even if NAME is already built")
    b.add_argument("--out", help="write the teacher into this folder instead (load it with --teacher lit:/that/folder)")
    b.add_argument("--benchmark", help="built OfflinePACS folder that every training icon is checked against "
                   "(exact pixels, near-duplicates; default: the one `vl2v data build OfflinePACS` writes)")
    b.add_argument("--no-benchmark-check", action="store_true",
                   help="build without a built OfflinePACS: skip the benchmark overlap and near-duplicate checks "
                   "(the manifest records \"benchmark_check\": \"skipped by flag\")")
    b.add_argument("--epochs", type=int, help="head training epochs (default 30)")
    b.add_argument("--beta", type=float, help="weight of the ConSE embedding in the mix, 0..1 (default 0.25)")
    b.add_argument("--beta-confident", type=float,
                   help="ConSE weight when the ImageNet classifier is certain of its top class; the mix moves from "
                   "--beta towards it with the top probability (default 0.25 = --beta: off; docs/teachers.md)")
    b.add_argument("--beta-far", metavar="W",
                   help="ConSE weight for a picture far from every training icon (the novelty gate; default 0.75, "
                   "chosen on held-out icons and photo validation; 'none': no novelty gate)")
    b.add_argument("--novelty-width", type=float,
                   help="how far below a held-out icon's typical similarity the novelty gate reaches --beta-far "
                   "(cosine; default 0.2)")
    b.add_argument("--no-photo-validation", action="store_true",
                   help="skip the photo validation (it fetches Debian qabcs-data with apt-get; never trained on)")
    b.add_argument("--hidden", type=int, help="hidden width of the MLP head (default 1024; 0: linear)")
    b.add_argument("--views", nargs="+", metavar="VIEW", help="training views: orig [line] (default: orig line)")
    b.add_argument("--workers", type=int, default=1, help="rendering processes beside the tower (default 1)")
    b.set_defaults(func=_cmd_build)
    t.set_defaults(func=lambda a: (t.print_help(), 2)[1])

    # deprecated alias of `teacher list`: no help=, so `vl2v --help` does not list it
    q = sub.add_parser("teachers", description=LIST_DESCRIPTION + " Deprecated: use `vl2v teacher list`.")
    _add_list_args(q)
    q.set_defaults(func=_cmd_teachers_alias)
