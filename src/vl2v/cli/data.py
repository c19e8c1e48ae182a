"""``vl2v data list|download|build|check``: get and validate datasets (:mod:`vl2v.data`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vl2v.cli.common import CLIError


def _cmd_data_list(args: argparse.Namespace) -> int:
    from vl2v.cli.listing import print_datasets

    print_datasets(args.root, present=True)
    sys.stdout.flush()
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from vl2v.data.registry import default_data_root, get_dataset

    spec = get_dataset(args.name)
    if spec.downloader is None:
        hint = f" It is built locally: run `vl2v data build {spec.name}`." if spec.builder else ""
        raise CLIError(f"dataset {spec.name} has no download.{hint}")
    root = Path(args.root) if args.root else default_data_root()
    folder = spec.downloader(root)
    print(f"{spec.name} is ready in {folder}")
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from vl2v.data.registry import default_data_root, get_dataset

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
    if args.json:
        from vl2v.cli.listing import print_json

        print_json(report.as_dict())
    else:
        print(report.render())
        sys.stdout.flush()
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
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
    q.add_argument("--json", action="store_true", help="print the counts and problems as JSON (nothing else on stdout; "
                   "the exit status is the same)")
    q.set_defaults(func=_cmd_data_check)
    pd.set_defaults(func=lambda a: (pd.print_help(), 2)[1])
