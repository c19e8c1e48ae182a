"""``vl2v embed``: precompute a dataset's teacher embeddings into the store (:mod:`vl2v.teachers`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from vl2v.cli.common import CLIError, parse_kv


def _cmd_embed(args: argparse.Namespace) -> int:
    import time

    from vl2v.data.folder import scan_folder
    from vl2v.data.registry import resolve_dataset
    from vl2v.teachers.precompute import precompute
    from vl2v.teachers.registry import create_teacher
    from vl2v.teachers.store import TeacherStore, default_store_path
    from vl2v.utils.progress import bar

    spec, folder = resolve_dataset(args.dataset if args.data is None else None, args.root, args.data)
    if not folder.is_dir():
        raise CLIError(f"dataset folder {folder} does not exist")
    scan = scan_folder(folder, verify=False)
    teacher = create_teacher(args.teacher, **parse_kv(args.teacher_opt, "--teacher-opt"))
    if args.device:
        teacher.to(args.device)
    path = Path(args.store) if args.store else default_store_path()
    store = TeacherStore(teacher, path)
    t0 = time.time()
    pbar = bar(len(scan.items), desc="embedding", unit="img")
    stats = precompute(scan, store, views=args.views, view_seed=args.view_seed, shard_size=args.shard_size,
                       batch_size=args.batch_size, progress=pbar.update)
    pbar.close()
    print(f"{stats.images} images ({stats.decoded} decoded, {stats.skipped} unreadable skipped), {stats.views} views: "
          f"{stats.queries} teacher queries, {stats.hits} already stored; {time.time() - t0:.1f}s; store {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # embed
    q = sub.add_parser("embed", help="precompute teacher embeddings of a dataset into the store (streaming, resumable)",
                       description="Walk a dataset in shards with bounded memory and store the teacher's embedding of "
                       "every image's evaluation view and K augmented views (the views training replays with --views K). "
                       "Interrupted runs resume where they stopped. Pay for a dataset's queries once, before a sweep.")
    q.add_argument("--dataset", default="OfflinePACS", help="registered dataset (default OfflinePACS)")
    q.add_argument("--data", help="a custom ROOT/domain/class/image folder (overrides --dataset)")
    q.add_argument("--root", help="folder holding registered datasets")
    q.add_argument("--teacher", default="conse", help="teacher spec (default conse)")
    q.add_argument("--teacher-opt", nargs="+", metavar="KEY=VALUE", help="teacher backend options")
    q.add_argument("--views", type=int, default=0, help="K augmented views per image besides the evaluation view (default 0)")
    q.add_argument("--view-seed", type=int, default=0, help="seed of the views (training uses 0)")
    q.add_argument("--store", help="teacher store file (default ~/.cache/vl2v/teacher_store.sqlite)")
    q.add_argument("--shard-size", type=int, default=256, help="images held in memory at once (default 256)")
    q.add_argument("--batch-size", type=int, default=64, help="images per teacher query batch (default 64)")
    q.add_argument("--device", help="device for the teacher")
    q.set_defaults(func=_cmd_embed)
