"""The ``vl2v`` command line. Thin: each subcommand calls one function of the package."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vl2v import __version__


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# --------------------------------------------------------------------------- data
def _cmd_data_list(args: argparse.Namespace) -> int:
    from vl2v.data.registry import default_data_root, list_datasets

    root = Path(args.root) if args.root else default_data_root()
    print(f"{'name':<16} {'domains':<58} {'classes':>7} {'images':>8}  how to get it")
    for spec in list_datasets():
        how = "vl2v data build" if spec.builder else ("vl2v data download" if spec.downloader else "-")
        n = spec.total_images
        present = "  [present]" if (root / spec.subdir).is_dir() else ""
        print(f"{spec.name:<16} {', '.join(spec.domains):<58} {spec.num_classes:>7} {n if n else '?':>8}  {how}{present}")
    print(f"\ndata root: {root}  (set with --root or $VL2V_DATA)")
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from vl2v.data.registry import get_dataset, default_data_root

    spec = get_dataset(args.name)
    if spec.downloader is None:
        hint = f" It is built locally: run `vl2v data build {spec.name}`." if spec.builder else ""
        raise CLIError(f"dataset {spec.name} has no download.{hint}")
    root = Path(args.root) if args.root else default_data_root()
    folder = spec.downloader(root)
    print(f"{spec.name} is ready in {folder}")
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from vl2v.data.registry import get_dataset, default_data_root

    spec = get_dataset(args.name)
    if spec.builder is None:
        hint = f" Download it with `vl2v data download {spec.name}`." if spec.downloader else ""
        raise CLIError(f"dataset {spec.name} is not built locally.{hint}")
    root = Path(args.root) if args.root else default_data_root()
    summary = spec.builder(root / spec.subdir, cache_dir=Path(args.cache) if args.cache else None,
                           image_size=args.size, force=args.force)
    print(summary.get("text", summary))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from vl2v.data.check import check_dataset

    report = check_dataset(name=args.name, root=args.root, data_dir=args.data, strict=args.strict)
    print(report.render())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vl2v",
        description="Distil a vision-language model into a small, robust image classifier "
        "(VL2V-ADiP, VL2V-SD and baselines, with the DomainBed protocol).",
    )
    p.add_argument("--version", action="version", version=f"vl2v {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # data
    pd = sub.add_parser("data", help="datasets: list, download, build, check",
                        description="Get and validate datasets (ROOT/domain/class/image folders).")
    sd = pd.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    root_help = "folder holding datasets (default: $VL2V_DATA or ~/.cache/vl2v/datasets)"

    q = sd.add_parser("list", help="list registered datasets")
    q.add_argument("--root", help=root_help)
    q.set_defaults(func=_cmd_data_list)

    q = sd.add_parser("download", help="download a DomainBed dataset (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet)",
                      description="Download a DomainBed dataset from the same sources DomainBed uses, "
                      "apply the same post-processing, and check the image counts.")
    q.add_argument("name", help="dataset name, e.g. PACS")
    q.add_argument("--root", help=root_help)
    q.set_defaults(func=_cmd_data_download)

    q = sd.add_parser("build", help="build the offline benchmark from pinned npm/Debian packages",
                      description="Fetch pinned packages with npm/apt-get into a cache, render, label and "
                      "preprocess the images, and write ROOT/domain/class/image plus manifest and attribution.")
    q.add_argument("name", help="dataset name, e.g. OfflinePACS")
    q.add_argument("--root", help=root_help)
    q.add_argument("--cache", help="package cache folder (default: ~/.cache/vl2v/packages)")
    q.add_argument("--size", type=int, default=224, help="output image side in pixels (default 224)")
    q.add_argument("--force", action="store_true", help="rebuild even if the dataset is already built")
    q.set_defaults(func=_cmd_data_build)

    q = sd.add_parser("check", help="validate a dataset folder and print its counts",
                      description="Validate ROOT/domain/class/image: missing domains, class sets that differ "
                      "across domains, empty classes, unreadable images. Exit 1 if anything is wrong.")
    q.add_argument("name", nargs="?", help="registered dataset name (omit with --data)")
    q.add_argument("--root", help=root_help)
    q.add_argument("--data", help="a custom ROOT/domain/class/image folder to check instead")
    q.add_argument("--strict", action="store_true", help="also fail on skipped (unreadable) files")
    q.set_defaults(func=_cmd_data_check)
    pd.set_defaults(func=lambda a: (pd.print_help(), 2)[1])
    return p


def main(argv: list[str] | None = None) -> int:
    from vl2v.data.download import DownloadError
    from vl2v.data.folder import FolderError
    from vl2v.registry import UnknownNameError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DownloadError as exc:
        print(f"vl2v: download failed: {exc}", file=sys.stderr)
        return 1
    except (CLIError, FolderError, UnknownNameError, FileNotFoundError) as exc:
        print(f"vl2v: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vl2v: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
