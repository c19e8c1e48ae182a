"""The LiT build's pictures: every pair rendered exactly as OfflinePACS renders its images, its training
views derived (``line``: an edge-map line drawing of a colour icon), and the locked tower run once per view.
The features, the render's pixel hash and every view's difference hash are cached on disk by content."""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from vl2v.teachers.lit_common import tower_pass
from vl2v.teachers.lit_overlap import pixel_hash
from vl2v.teachers.lit_pairs import Pair

BUILD_VERSION = 2  # bump when rendering, views or features change (invalidates the feature cache); 2: dhashes
RENDER_SIZE = 224  # OfflinePACS's image size: pairs are rendered exactly as its images are


def line_view(img: Any) -> Any:
    """An edge-map line drawing of a (colour) icon: dark strokes on white, re-framed like the benchmark."""
    from PIL import Image, ImageFilter, ImageOps

    from vl2v.data.offline import imaging as im

    g = ImageOps.expand(img.convert("L"), border=8, fill=255)
    e = np.asarray(g.filter(ImageFilter.FIND_EDGES), dtype=np.int16).copy()
    e[:2], e[-2:], e[:, :2], e[:, -2:] = 0, 0, 0, 0  # the filter copies the outermost pixels unfiltered
    lines = Image.fromarray(np.where(e > 32, 0, 255).astype(np.uint8)).filter(ImageFilter.MinFilter(3))
    return im.prepare(lines.convert("RGBA"), img.size[0]).image


def render_pair(args: tuple[Pair, int]) -> tuple[str, dict[str, np.ndarray] | None, str]:
    """(id, {view: uint8 HxWx3}, orig pixel hash or an error); runs in a worker process."""
    from PIL import Image

    from vl2v.data.offline.build import render_candidate
    from vl2v.data.offline.sources import Candidate

    pair, size = args
    r = render_candidate((Candidate(pair.id, "", "", pair.source, pair.member, "svg", data=pair.svg), size))
    if r.png is None:
        return pair.id, None, r.error
    img = Image.open(io.BytesIO(r.png)).convert("RGB")
    views = {"orig": np.asarray(img)}
    if "line" in pair.views:
        try:
            views["line"] = np.asarray(line_view(img).convert("RGB"))
        except ValueError:  # nothing left of a flat icon's edges
            pass
    return pair.id, views, pixel_hash(img)


@dataclass
class Features:
    feats: torch.Tensor  # [V, 1280] float16
    pair: list[int]  # pair index of each row
    view: list[str]  # view name of each row
    hashes: dict[str, str] = field(default_factory=dict)  # pair id -> orig pixel hash
    failed: dict[str, str] = field(default_factory=dict)  # pair id -> render error
    # torch threads of the tower pass that computed ``feats`` (their last bits depend on it; None: not recorded)
    threads: int | None = None
    dhash: list[int] = field(default_factory=list)  # difference hash of each row's picture (near-duplicate check)

    def select(self, rows: Sequence[int], renumber: dict[int, int]) -> Features:
        """Only ``rows``, their pair indices renumbered (``renumber``: old pair index -> new)."""
        rows = list(rows)
        return Features(self.feats[rows], [renumber[self.pair[r]] for r in rows], [self.view[r] for r in rows],
                        dict(self.hashes), dict(self.failed), self.threads, [self.dhash[r] for r in rows])


def _rendered(jobs: list[Any], pool: Any, chunk: int = 32) -> Iterator[list[Any]]:
    """Rendered chunks in order; with a pool the next chunk renders while the caller runs the tower on this
    one (at most two chunks in memory)."""
    parts = [jobs[i:i + chunk] for i in range(0, len(jobs), chunk)]
    if pool is None:
        for part in parts:
            yield [render_pair(j) for j in part]
        return
    pending = pool.map_async(render_pair, parts[0], chunksize=4) if parts else None
    for i in range(len(parts)):
        done = pending.get()
        pending = pool.map_async(render_pair, parts[i + 1], chunksize=4) if i + 1 < len(parts) else None
        yield done


def _cache_files(pairs: Sequence[Pair], tower_tag: str, cache_dir: Path) -> tuple[Path, Path]:
    key = hashlib.sha256(json.dumps([BUILD_VERSION, tower_tag, RENDER_SIZE,
                                     [(p.id, p.sha256, list(p.views)) for p in pairs]]).encode()).hexdigest()[:24]
    return cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"


def _add_batch(out: Features, batch: list[Any], index: dict[str, int], tower: torch.nn.Module,
               chunks: list[torch.Tensor]) -> None:
    """One rendered chunk through the tower: its rows, pixel hashes, dhashes and failures into ``out``."""
    from PIL import Image

    from vl2v.data.offline import imaging as im

    imgs, rows = [], []
    for pid, views, h in batch:
        if views is None:
            out.failed[pid] = h
            continue
        out.hashes[pid] = h
        for v in ("orig", "line"):
            if v in views:
                imgs.append(views[v])
                rows.append((index[pid], v))
    if imgs:
        chunks.append(tower_pass(imgs, tower))
        out.pair.extend(r[0] for r in rows)
        out.view.extend(r[1] for r in rows)
        out.dhash.extend(im.dhash(Image.fromarray(a)) for a in imgs)


def extract_features(pairs: Sequence[Pair], tower: torch.nn.Module, tower_tag: str, cache_dir: Path | None,
                     workers: int = 1, progress: Callable[[int], None] = lambda n: None) -> Features:
    """Render every pair (views), hash its pixels and run the locked tower; cached by content in ``cache_dir``."""
    from safetensors.torch import load_file, save_file

    from vl2v.utils.io import atomic_path, atomic_write_json

    if cache_dir is not None:
        ff, fm = _cache_files(pairs, tower_tag, cache_dir)
        if ff.is_file() and fm.is_file():
            meta = json.loads(fm.read_text("utf-8"))
            progress(len(pairs))
            return Features(load_file(str(ff))["feats"], meta["pair"], meta["view"], meta["hashes"], meta["failed"],
                            meta.get("threads"), [int(h) for h in meta["dhash"]])
    index = {p.id: i for i, p in enumerate(pairs)}
    out = Features(torch.empty(0, 0), [], [], threads=torch.get_num_threads())
    chunks: list[torch.Tensor] = []
    pool = None
    if workers > 0 and len(pairs) > 64:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(workers)
    try:
        for batch in _rendered([(p, RENDER_SIZE) for p in pairs], pool):
            _add_batch(out, batch, index, tower, chunks)
            progress(len(batch))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    out.feats = torch.cat(chunks) if chunks else torch.zeros(0, 1280, dtype=torch.float16)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(ff) as tmp:
            save_file({"feats": out.feats.contiguous()}, str(tmp))
        atomic_write_json(fm, {"pair": out.pair, "view": out.view, "hashes": out.hashes, "failed": out.failed,
                               "threads": out.threads, "dhash": [str(h) for h in out.dhash]})
    return out


__all__ = ["BUILD_VERSION", "RENDER_SIZE", "Features", "extract_features", "line_view", "render_pair"]
