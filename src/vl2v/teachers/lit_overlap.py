"""What the LiT build and its photo validation compare with the built OfflinePACS benchmark.

Two checks, both against every image of the benchmark folder:

* exact pixels (:func:`pixel_hash`, :func:`check_exclusion`): a training picture with a benchmark image's
  pixels aborts the build (its source carries the benchmark's artwork);
* near duplicates (:func:`near_duplicates`): a picture whose locked-tower features have cosine similarity
  >= ``COSINE`` with a benchmark image's, or whose difference hash is within ``DHASH_BITS`` bits of one, is
  dropped and listed: a re-render, a restyle, a mirror or a crop of the same drawing. The build applies it to
  every training view, the photo validation (:mod:`vl2v.teachers.lit_photoval`) to its pictures, with the
  same thresholds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vl2v.teachers.lit_common import BenchmarkOverlapError, benchmark_paths, tower_pass

HASH_SIZE = 32  # pixel hashes are taken at this size
COSINE = 0.85  # tower-feature cosine at or above which a picture counts as a benchmark image's near-duplicate
DHASH_BITS = 4  # difference-hash distance (of 64 bits) at or below which it does too
VERSION = 1  # bump when the preprocessing or the feature pass changes (invalidates cached benchmark features)


def thresholds() -> dict[str, Any]:
    """The near-duplicate thresholds as a manifest records them."""
    return {"cosine_at_least": COSINE, "dhash_bits_at_most": DHASH_BITS}


# --------------------------------------------------------------------------- exact pixels
def pixel_hash(img: Any) -> str:
    """sha256 of the RGB pixels at HASH_SIZE x HASH_SIZE (the picture as the benchmark would store it)."""
    from PIL import Image

    im = img.convert("RGB")
    if im.size != (HASH_SIZE, HASH_SIZE):
        im = im.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
    return hashlib.sha256(im.tobytes()).hexdigest()


def benchmark_hashes(bench: Path) -> dict[str, str]:
    """pixel hash -> image path of every image of a built OfflinePACS folder."""
    from PIL import Image

    out: dict[str, str] = {}
    for rel in benchmark_paths(bench):
        with Image.open(bench / rel) as im:
            out[pixel_hash(im)] = rel
    return out


def check_exclusion(pair_hashes: dict[str, str], bench_hashes: dict[str, str]) -> None:
    """Raise :class:`BenchmarkOverlapError` when any training picture has a benchmark image's pixel hash."""
    clash = sorted((pid, bench_hashes[h]) for pid, h in pair_hashes.items() if h in bench_hashes)
    if clash:
        shown = "; ".join(f"{pid} = {path}" for pid, path in clash[:5])
        raise BenchmarkOverlapError(
            f"{len(clash)} LiT training picture(s) have the same pixels as OfflinePACS images ({shown}"
            f"{'; ...' if len(clash) > 5 else ''}). The teacher must not train on the benchmark: drop the source "
            "that carries this artwork from vl2v/teachers/lit_sources.json")


# --------------------------------------------------------------------------- near duplicates
def tower_features(imgs: list[Any], tower: torch.nn.Module, batch: int = 32) -> torch.Tensor:
    """The locked tower's pooled features of prepared pictures, in batches (the build's own view and rounding)."""
    out = [tower_pass([np.asarray(a.convert("RGB")) for a in imgs[i:i + batch]], tower)
           for i in range(0, len(imgs), batch)]
    return torch.cat(out) if out else torch.zeros(0, 1280, dtype=torch.float16)


def benchmark_features(bench: Path, tower: torch.nn.Module, tower_tag: str, cache_dir: Path | None
                       ) -> tuple[list[str], torch.Tensor, list[int]]:
    """(paths, tower features, difference hashes) of every image of a built OfflinePACS folder; cached by the
    benchmark manifest's content."""
    from PIL import Image
    from safetensors.torch import load_file, save_file

    from vl2v.data.offline import imaging as im
    from vl2v.utils.io import atomic_path, atomic_write_json

    paths = benchmark_paths(bench)
    man = bench / "manifest.jsonl"
    content = man.read_bytes() if man.is_file() else "\n".join(paths).encode()
    key = hashlib.sha256(json.dumps([VERSION, tower_tag]).encode() + content).hexdigest()[:24]
    if cache_dir is not None:
        ff, fm = cache_dir / f"bench-{key}.safetensors", cache_dir / f"bench-{key}.json"
        if ff.is_file() and fm.is_file():
            meta = json.loads(fm.read_text("utf-8"))
            return meta["paths"], load_file(str(ff))["feats"], [int(h) for h in meta["dhash"]]
    imgs = []
    for rel in paths:
        with Image.open(bench / rel) as b:
            imgs.append(b.convert("RGB"))
    feats = tower_features(imgs, tower)
    dh = [im.dhash(b) for b in imgs]
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(ff) as tmp:
            save_file({"feats": feats.contiguous()}, str(tmp))
        atomic_write_json(fm, {"paths": paths, "dhash": [str(h) for h in dh]})
    return paths, feats, dh


def dhash_distances(dh: Sequence[int], bench_dh: Sequence[int]) -> np.ndarray:
    """Hamming distances [len(dh), len(bench_dh)] between 64-bit difference hashes."""
    a = np.array([int(h) for h in dh], dtype=np.uint64).reshape(-1, 1)
    b = np.array([int(h) for h in bench_dh], dtype=np.uint64).reshape(1, -1)
    return np.bitwise_count(a ^ b).astype(np.int64)


def near_duplicates(feats: torch.Tensor, dh: Sequence[int], bench_feats: torch.Tensor, bench_dh: Sequence[int],
                    bench_paths: Sequence[str], chunk: int = 2048) -> dict[int, dict[str, Any]]:
    """Index -> (the benchmark image it resembles, cosine, dhash distance) for every picture with tower-feature
    cosine >= ``COSINE`` to a benchmark image or a difference hash within ``DHASH_BITS`` bits of one. The
    image named is the most similar by cosine when that passes, else the closest hash (the first on ties)."""
    if not len(bench_paths) or not len(dh):
        return {}
    bf = F.normalize(bench_feats.float(), dim=-1)
    out: dict[int, dict[str, Any]] = {}
    for s in range(0, len(dh), chunk):
        sim = F.normalize(feats[s:s + chunk].float(), dim=-1) @ bf.T
        best, arg = sim.max(dim=1)
        best64 = best.double().numpy()
        dists = dhash_distances(dh[s:s + chunk], bench_dh)
        near = dists.argmin(axis=1)
        rows = np.arange(len(near))
        hit = (best64 >= COSINE) | (dists[rows, near] <= DHASH_BITS)
        for i in np.flatnonzero(hit):
            k = int(arg[i]) if best64[i] >= COSINE else int(near[i])
            out[s + int(i)] = {"benchmark": bench_paths[k], "cosine": round(float(sim[i, k]), 4),
                               "dhash_bits": int(dists[i, k])}
    return out


__all__ = ["COSINE", "DHASH_BITS", "HASH_SIZE", "benchmark_features", "benchmark_hashes", "check_exclusion",
           "dhash_distances", "near_duplicates", "pixel_hash", "thresholds", "tower_features"]
