"""``vl2v teacher build NAME``: train the offline LiT teacher (:mod:`vl2v.teachers.lit`).

This module runs the build; each job lives in its own module:

* :mod:`~vl2v.teachers.lit_sources`: the pinned sources and their artwork families; a source of a family
  OfflinePACS uses is refused;
* :mod:`~vl2v.teachers.lit_pairs`: captions and (icon, caption) pairs, the concept split;
* :mod:`~vl2v.teachers.lit_render`: rendering, training views, the locked tower's features (cached);
* :mod:`~vl2v.teachers.lit_overlap`: the comparisons with the built benchmark (exact pixels, near duplicates);
* :mod:`~vl2v.teachers.lit_train`: the settings, head training and the held-out readings;
* :mod:`~vl2v.teachers.lit_report`: the photo validation's report, the printed readings.

Steps (each deterministic on the CPU, so the same inputs give the same weights):

1. refuse to start without a built OfflinePACS (the checks below need its images) unless told to skip the
   benchmark check (``benchmark_check=False``, ``--no-benchmark-check``; the manifest records it);
2. refuse any source whose artwork family OfflinePACS uses (:func:`check_sources`), fetch the pinned npm
   packages of ``lit_sources.json`` with ``npm pack`` (sha256-checked) and collect (icon, caption) pairs;
3. render every icon at the benchmark's size, derive its training views and run the locked tower once per view;
4. abort if any render has an OfflinePACS image's pixels (:func:`check_exclusion`), then drop every icon one of
   whose training views is a near-duplicate of an OfflinePACS image (tower cosine / difference hash, the photo
   validation's thresholds), listing each match in the manifest;
5. split the pairs by concept, train the head contrastively, measure held-out retrieval, train the shipped head
   on every concept, run the photo validation and write ``head.safetensors`` + ``manifest.json`` atomically.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from vl2v.config import validated
from vl2v.teachers.lit import BANK, FORMAT, MANIFEST, WEIGHTS, Head, Novelty, teacher_dir
from vl2v.teachers.lit_common import BenchmarkOverlapError, LiTBuildError, benchmark_paths, sources_file
from vl2v.teachers.lit_overlap import (
    HASH_SIZE,
    benchmark_features,
    benchmark_hashes,
    check_exclusion,
    near_duplicates,
    pixel_hash,
    thresholds,
)
from vl2v.teachers.lit_pairs import Pair, clean_caption, collect_pairs, segment, split_concepts
from vl2v.teachers.lit_render import BUILD_VERSION, RENDER_SIZE, Features, extract_features, line_view, render_pair
from vl2v.teachers.lit_report import format_metrics, format_photo, photo_report
from vl2v.teachers.lit_sources import check_sources, lit_sources, record_sources, source_pins
from vl2v.teachers.lit_train import (
    FAR_GRID,
    GATE_GRID,
    BuildConfig,
    Prepared,
    conse_parts,
    fit,
    prepare_training,
    style_of,
    train_head,
)

SKIPPED_BY_FLAG = "skipped by flag"  # the manifest's benchmark_check when --no-benchmark-check was given
_NOT_CHECKED = {"skipped": "benchmark check skipped by flag (--no-benchmark-check)"}


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(r, c) / 1024.0  # Linux reports KiB


def default_benchmark() -> Path:
    """Where `vl2v data build OfflinePACS` writes the benchmark (``$VL2V_DATA`` or ``$VL2V_HOME/datasets``)."""
    from vl2v.data.registry import default_data_root

    return default_data_root() / "offline_pacs"


def require_benchmark(bench: Path) -> None:
    """Refuse to build without a built OfflinePACS folder (its images are what the checks compare with)."""
    if bench.is_dir() and benchmark_paths(bench):
        return
    raise LiTBuildError(f"no built OfflinePACS at {bench}: the LiT build checks every training icon against the "
                        "benchmark's images and needs them; build it with `vl2v data build OfflinePACS` (or pass "
                        "--benchmark DIR), or pass --no-benchmark-check to build without the check (the manifest "
                        "says so)")


# --------------------------------------------------------------------------- sources
def fetch_pool(log: Callable[[str], None]) -> tuple[list[Pair], list[dict[str, Any]]]:
    """Fetch the pinned sources and collect their pairs; returns (pairs, source records for the manifest)."""
    from vl2v.data.offline.fetch import PackageCache, extract_package, fetch_packages
    from vl2v.utils.io import vl2v_home

    spec = sources_file()
    check_sources(lit_sources(spec))
    pins = source_pins()
    families = {e["key"]: e.get("family", "") for e in spec["packages"]}
    cache = PackageCache(vl2v_home() / "packages")
    archives = fetch_packages(pins, cache)
    roots = {p.key: extract_package(p, archives[p.key], cache) for p in pins}
    sets = dict(spec["sets"])
    pairs = collect_pairs(roots, sets, roots[spec["captions"]] / "package" / "emoji.json")
    n: dict[str, int] = {}
    for p in pairs:
        n[p.source] = n.get(p.source, 0) + 1
    records = [{"key": p.key, "package": p.name, "version": p.version, "licence": p.licence, "credit": p.credit,
                "family": families[p.key], "sha256": p.sha256,
                "role": "captions" if p.key == spec["captions"] else "images",
                "pairs": n.get(p.key, 0), "views": list(sets.get(p.key, {}).get("views", []))} for p in pins]
    log(f"{len(pairs)} (icon, caption) pairs from {len(sets)} icon sets")
    return pairs, records


# --------------------------------------------------------------------------- the benchmark checks
def exact_check(prep: Prepared, bench: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """No training render may have a benchmark image's pixels (raises :class:`BenchmarkOverlapError`)."""
    bh = benchmark_hashes(bench)
    check_exclusion(prep.features.hashes, bh)
    log(f"exclusion check: {len(prep.features.hashes)} pictures vs {len(bh)} OfflinePACS images: no overlap")
    return {"benchmark": str(bench), "benchmark_images": len(bh), "pictures_checked": len(prep.features.hashes),
            "overlaps": 0, "hash": f"sha256 of RGB pixels at {HASH_SIZE}x{HASH_SIZE} (bilinear) of the "
                                   f"{RENDER_SIZE}px render"}


def drop_near_duplicates(prep: Prepared, cfg: BuildConfig, bench: Path, cache_dir: Path | None,
                         log: Callable[[str], None]) -> tuple[Prepared, dict[str, Any]]:
    """Compare every training view (``cfg.views``) with every benchmark image (tower cosine, difference hash)
    and drop each icon with a near-duplicate view (all its views); returns the rest and the manifest's record."""
    fe = prep.features
    rows = [r for r, v in enumerate(fe.view) if v in cfg.views]
    bpaths, bfeats, bdh = benchmark_features(bench, prep.tower, prep.tower_tag, cache_dir)
    dups = near_duplicates(fe.feats[rows], [fe.dhash[r] for r in rows], bfeats, bdh, bpaths)
    matches = []
    for i, d in sorted(dups.items()):
        p = prep.pairs[fe.pair[rows[i]]]
        matches.append({"icon": p.id, "source": p.source, "member": p.member, "caption": p.caption,
                        "view": fe.view[rows[i]], **d})
    ids = {m["icon"] for m in matches}
    log(f"near-duplicate check: {len(rows)} training views vs {len(bpaths)} OfflinePACS images: {len(ids)} icons "
        f"({len(matches)} views) dropped as near-duplicates of benchmark images")
    record = {"benchmark": str(bench), "benchmark_images": len(bpaths), "views_checked": len(rows),
              "views": list(cfg.views), **thresholds(), "dropped_icons": len(ids), "dropped_views": len(matches),
              "matches": matches}
    return (prep.without(ids) if ids else prep), record


# --------------------------------------------------------------------------- training and writing
def train_heads(prep: Prepared, cfg: BuildConfig, log: Callable[[str], None]
                ) -> tuple[tuple[Head, list[int]], tuple[Head, list[int]], dict[str, Any], dict[str, Any]]:
    """The validation head (held-out concepts out) and the shipped head (every concept, the same recipe), each
    with its training rows; the held-out readings and the counts. One torch thread: the same bits anywhere."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        val_head, metrics, counts, val_rows = fit(prep, cfg, log)
        full = validated(BuildConfig, {**asdict(cfg), "val_fraction": 0.0})
        head, _, full_counts, rows = fit(prep, full, log)
    finally:
        torch.set_num_threads(threads)
    counts["final_views"] = full_counts["train_views"]
    counts["final_captions"] = full_counts["train_captions"]
    return (val_head, val_rows), (head, rows), metrics, counts


def novelty_of(metrics: dict[str, Any], cfg: BuildConfig, log: Callable[[str], None]) -> Novelty | None:
    """The novelty gate measured on the held-out concepts (None: off, or nothing held out)."""
    if "novelty" not in metrics:
        if cfg.beta_far is not None:
            log("novelty gate off: no held-out concepts to set its threshold on")
        return None
    nov = Novelty(**{k: metrics["novelty"][k] for k in ("k", "near", "width", "beta_far")})
    log(f"novelty gate: ConSE weight {cfg.beta_confident if cfg.beta_confident == cfg.beta else 'g(x)'} "
        f"at score >= {nov.near:.4f} (held-out icons' {cfg.novelty_quantile:g} quantile), {nov.beta_far:g} "
        f"at <= {nov.near - nov.width:.4f}")
    return nov


def write_weights(folder: Path, head: Head, bank: torch.Tensor | None) -> str:
    """``head.safetensors`` (the head, and the novelty bank when there is a gate), atomically; its sha256."""
    from safetensors.torch import save_file

    from vl2v.utils.hashing import file_digest
    from vl2v.utils.io import atomic_path

    folder.mkdir(parents=True, exist_ok=True)
    wfile = folder / WEIGHTS
    tensors = {k: v.contiguous() for k, v in head.state_dict().items()}
    if bank is not None:
        tensors[BANK] = bank
    with atomic_path(wfile) as tmp:
        # no metadata: safetensors writes a metadata map in an arbitrary order, which would change the file's
        # sha256 from build to build (the manifest holds the format and name instead)
        save_file(tensors, str(tmp))
    return file_digest(wfile)


def head_record(prep: Prepared, cfg: BuildConfig, nov: Novelty | None) -> dict[str, Any]:
    return {"in_dim": int(prep.features.feats.shape[1]) if prep.features.feats.numel() else 1280,
            "hidden": cfg.hidden, "k": cfg.k, "beta": cfg.beta, "beta_confident": cfg.beta_confident,
            "novelty": asdict(nov) if nov is not None else None, "label_template": cfg.label_template}


# --------------------------------------------------------------------------- the build
def build_teacher(name: str, *, out_dir: Path | None = None, config: BuildConfig | None = None,
                  pool: tuple[list[Pair], list[dict[str, Any]]] | None = None, benchmark: Path | None = None,
                  benchmark_check: bool = True, force: bool = False, workers: int = 1, cache_dir: Path | None = None,
                  photo_validation: bool | tuple[Path, set[str]] = True,
                  log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Path:
    """Build LiT teacher ``name`` into ``out_dir`` (default ``<home>/teachers/NAME``); return the folder.

    ``pool`` injects (pairs, source records with their ``family``) instead of fetching (tests); ``benchmark``
    is the built OfflinePACS folder (default: :func:`default_benchmark`) that no training picture may
    repeat: refused when it is not built, unless ``benchmark_check`` is False (then nothing is compared and the
    manifest says ``"benchmark_check": "skipped by flag"``). ``photo_validation``: True fetches the pinned
    photo-validation package (:mod:`lit_photoval`), False skips it, ``(folder, photo file names)`` uses a folder
    of ``<category>/<name>.png`` pictures (tests).
    """
    from vl2v.utils.io import atomic_write_json, vl2v_home

    cfg = config or BuildConfig()
    t0 = time.time()
    folder = Path(out_dir) if out_dir is not None else teacher_dir(name)
    if (folder / MANIFEST).is_file() and not force:
        raise LiTBuildError(f"LiT teacher {name!r} is already built in {folder}; pass --force to build it again")
    bench = Path(benchmark) if benchmark is not None else default_benchmark()
    if benchmark_check:
        require_benchmark(bench)
    if pool is not None:
        check_sources(record_sources(pool[1]))
    cache_dir = cache_dir if cache_dir is not None else vl2v_home() / "teachers" / "_features"
    pairs, records = pool if pool is not None else fetch_pool(log)
    prep = prepare_training(pairs, cfg, cache_dir, workers, log)
    exclusion, near = _NOT_CHECKED, _NOT_CHECKED
    if benchmark_check:
        exclusion = exact_check(prep, bench, log)
        prep, near = drop_near_duplicates(prep, cfg, bench, cache_dir, log)
    else:
        log("benchmark check skipped by flag: training pictures were not compared with OfflinePACS")
    (val_head, val_rows), (head, rows), metrics, counts = train_heads(prep, cfg, log)
    counts["near_duplicates_dropped"] = near.get("dropped_icons")
    nov = novelty_of(metrics, cfg, log)
    bank = prep.features.feats[rows].contiguous()  # float16, the shipped head's training views
    photo = None
    if photo_validation is not False:
        photo = photo_report(prep, cfg, photo_validation, bench if benchmark_check else None, cache_dir,
                             (val_head, prep.features.feats[val_rows]), (head, bank), nov, log)
    digest = write_weights(folder, head, bank if nov is not None else None)
    manifest = {
        "format": FORMAT, "name": name, "backend": "lit", "weights": WEIGHTS, "weights_sha256": digest,
        "head": head_record(prep, cfg, nov),
        "tower": f"tf_efficientnet_lite2:{prep.tower_tag} (locked)", "text": "all-MiniLM-L6-v2 (locked)",
        "training": {**asdict(cfg), "views": list(cfg.views), "build_version": BUILD_VERSION,
                     "render_size": RENDER_SIZE, "tower_threads": prep.features.threads},
        "sources": records, "counts": counts, "validation": metrics, "photo_validation": photo,
        "benchmark_check": "done" if benchmark_check else SKIPPED_BY_FLAG,
        "exclusion_check": exclusion, "near_duplicate_check": near,
        "build_seconds": round(time.time() - t0, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    atomic_write_json(folder / MANIFEST, manifest)
    log(f"LiT teacher {name!r} written to {folder} (weights sha256 {digest[:16]}..., "
        f"{manifest['build_seconds']:.0f}s, peak RSS {manifest['peak_rss_mb']:.0f} MB)")
    return folder


# names other code and tests import from here (their homes: the modules above)
__all__ = ["BUILD_VERSION", "FAR_GRID", "GATE_GRID", "HASH_SIZE", "RENDER_SIZE", "SKIPPED_BY_FLAG",
           "BenchmarkOverlapError", "BuildConfig", "Features", "LiTBuildError", "Pair", "Prepared",
           "benchmark_hashes", "build_teacher", "check_exclusion", "check_sources", "clean_caption", "collect_pairs",
           "conse_parts", "default_benchmark", "extract_features", "fetch_pool", "fit", "format_metrics",
           "format_photo", "line_view", "photo_report", "pixel_hash", "prepare_training", "render_pair",
           "require_benchmark", "segment", "source_pins", "split_concepts", "style_of", "train_head"]
