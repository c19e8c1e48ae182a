"""Streaming teacher-embedding precomputation with bounded memory, resumable mid-way.

``vl2v embed`` walks a dataset in shards of ``shard_size`` images: decode,
hash, render the teacher's views (its evaluation view plus K seeded
augmentations, the same views training replays), ask the store for what is
missing, commit, forget the shard. Memory is bounded by one shard whatever the
dataset size (DomainNet's 586k images included). An interrupted run loses at
most the batch in flight: the store commits every teacher batch, and a path
index (path, size, mtime -> content hash, size) lets a restart skip decoding
images whose views are all stored already.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import Callable

from vl2v.data.folder import FolderScan
from vl2v.teachers.store import TeacherStore, view_id


@dataclass
class PrecomputeStats:
    images: int = 0
    decoded: int = 0  # images decoded this run (the others were known from the path index)
    skipped: int = 0  # undecodable files
    views: int = 0
    queries: int = 0
    hits: int = 0


def _index(store: TeacherStore) -> sqlite3.Connection:
    conn = store._conn
    if not store.read_only:
        with conn:
            conn.execute("CREATE TABLE IF NOT EXISTS paths (path TEXT, size INTEGER, mtime INTEGER, max_side INTEGER, "
                         "content TEXT, width INTEGER, height INTEGER, PRIMARY KEY (path, size, mtime, max_side)) WITHOUT ROWID")
    return conn


def precompute(scan: FolderScan, store: TeacherStore, views: int = 0, view_seed: int = 0, max_side: int | None = 256,
               shard_size: int = 256, batch_size: int = 64,
               progress: Callable[[int], None] | None = None) -> PrecomputeStats:
    """Make sure the store holds the teacher embedding of every image's views; returns what it did."""
    import torch

    from vl2v.data.dataset import decode_for_bank
    from vl2v.data.images import ImageDecodeError
    from vl2v.data.transforms import teacher_view, training_views

    conn = _index(store)
    stats = PrecomputeStats()
    size = store.teacher.image_size
    ms = -1 if max_side is None else max_side
    items = scan.items
    for start in range(0, len(items), shard_size):
        shard = items[start:start + shard_size]
        keys: list[tuple[str, object]] = []
        owner: list[int] = []
        images: dict[int, torch.Tensor] = {}
        for j, rec in enumerate(shard):
            path = scan.abspath(rec)
            try:
                st = os.stat(path)
            except OSError:
                stats.skipped += 1
                continue
            row = conn.execute("SELECT content, width, height FROM paths WHERE path=? AND size=? AND mtime=? AND max_side=?",
                               (rec.path, st.st_size, st.st_mtime_ns, ms)).fetchone()
            if row is not None:
                content, w, h = row
                wanted = [(content, None)] + [(content, p) for p in training_views(content, views, view_seed,
                                                                                    aspect=w / h)]
                have = store.lookup_images([(c, view_id(p)) for c, p in wanted])
                if len(have) == len(wanted):
                    stats.images += 1
                    stats.views += len(wanted)
                    stats.hits += len(wanted)
                    continue
            try:
                img, content = decode_for_bank(path, max_side)
            except ImageDecodeError:
                stats.skipped += 1
                continue
            stats.decoded += 1
            stats.images += 1
            images[j] = img
            h, w = img.shape[1], img.shape[2]
            if not store.read_only:
                with conn:
                    conn.execute("INSERT OR REPLACE INTO paths VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 (rec.path, st.st_size, st.st_mtime_ns, ms, content, w, h))
            for p in [None] + training_views(content, views, view_seed, aspect=w / h):
                keys.append((content, p))
                owner.append(j)
        if keys:
            before = (store.stats.image_queries, store.stats.image_hits)
            store.image_embeddings(keys, lambda i: teacher_view(images[owner[i]], keys[i][1], size), batch_size=batch_size)
            stats.queries += store.stats.image_queries - before[0]
            stats.hits += store.stats.image_hits - before[1]
            stats.views += len(keys)
        images.clear()
        if progress is not None:
            progress(len(shard))
    return stats
