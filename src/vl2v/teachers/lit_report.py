"""The LiT build's reports: the photo validation of both heads (:mod:`vl2v.teachers.lit_photoval`) as the
manifest records it, and the manifest's readings as the command line prints them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from vl2v.errors import UserError
from vl2v.teachers import lit_photoval as pv
from vl2v.teachers.lit import Head, Novelty
from vl2v.teachers.lit_overlap import thresholds
from vl2v.teachers.lit_render import RENDER_SIZE
from vl2v.teachers.lit_train import FAR_GRID, BuildConfig, Prepared, conse_parts


def photo_report(prep: Prepared, cfg: BuildConfig, source: bool | tuple[Path, set[str]], bench: Path | None,
                 cache_dir: Path | None, val: tuple[Head, torch.Tensor], shipped: tuple[Head, torch.Tensor],
                 nov: Novelty | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Photo validation of the validation head (whose held-out numbers chose the recipe) and the shipped head;
    ``{"skipped": why}`` when the package cannot be had (it is validation only: the build goes on).
    ``bench`` None: the benchmark check was skipped by flag (no near-duplicate filter either)."""
    from vl2v.data.offline.fetch import FetchError

    try:
        if source is True:
            root, record = pv.fetch_root(log)
            photos = set(pv.spec()["photos"])
        else:
            root, photos = source[0], set(source[1])
            record = {"package": str(root), "role": "photo validation (never trained on)"}
        ps = pv.prepare_photos(Path(root), photos, prep.tower, prep.tower_tag, bench, cache_dir, RENDER_SIZE,
                               record)
    except (FetchError, UserError, OSError) as exc:
        log(f"photo validation skipped: {exc}")
        return {"skipped": str(exc)}
    cq = conse_parts(prep.tower, prep.class_text, ps.feats.float(), cfg.k)
    targets = pv.caption_targets(ps, prep.encode, cfg.label_template)
    out: dict[str, Any] = {
        "source": ps.source, "pictures": len(ps.files), "photos": int(ps.photo.sum()),
        "near_duplicate_check": ({"benchmark": str(bench), **thresholds(), "dropped": ps.dropped}
                                 if bench is not None else {"skipped": "benchmark check skipped by flag: pictures may "
                                                                       "repeat benchmark artwork"}),
        "validation_head": pv.evaluate(ps, val[0], F.normalize(val[1].float(), dim=-1), nov, cq, targets, cfg,
                                       FAR_GRID if nov is not None else ()),
        "shipped_head": pv.evaluate(ps, shipped[0], F.normalize(shipped[1].float(), dim=-1), nov, cq, targets, cfg),
    }
    log(f"photo validation: {out['pictures']} pictures ({out['photos']} photographs), "
        f"{len(ps.dropped)} near-duplicates of benchmark images dropped")
    return out


def format_metrics(metrics: dict[str, Any]) -> str:
    lines = []
    for kind in ("lit", "no_novelty", "head_only", "conse_only"):
        if kind in metrics:
            parts = [f"{g} R@1 {m['recall@1']:.3f} R@5 {m['recall@5']:.3f} (n={m['n']})" for g, m in metrics[kind].items()]
            lines.append(f"  {kind}: " + "; ".join(parts))
    if "gate" in metrics:
        parts = [f"{b}: R@1 {m['recall@1']:.3f} R@5 {m['recall@5']:.3f}" for b, m in metrics["gate"].items()]
        lines.append("  beta_confident (all): " + "; ".join(parts))
    if "novelty" in metrics:
        nv = metrics["novelty"]
        parts = [f"{b}: R@1 {m['recall@1']:.3f} R@5 {m['recall@5']:.3f}" for b, m in nv["far"].items()]
        lines.append(f"  novelty gate (near {nv['near']:.4f}, width {nv['width']:g}), beta_far (all): " + "; ".join(parts))
    if "top_probability" in metrics:
        lines.append("  mean ImageNet top probability: " + "; ".join(f"{g} {v:.3f}" for g, v in
                                                                     metrics["top_probability"].items()))
    return "\n".join(lines)


def format_photo(photo: dict[str, Any]) -> str:
    """The photo-validation block of a manifest, as lines."""
    if "skipped" in photo:
        return f"  skipped: {photo['skipped']}"
    lines = [f"  {photo['pictures']} pictures ({photo['photos']} photographs), "
             f"{photo['validation_head']['candidates']} candidate captions"]
    for which in ("validation_head", "shipped_head"):
        ev = photo[which]
        for kind in ("lit", "no_novelty", "head_only", "conse_only"):
            parts = [f"{g} R@1 {m['recall@1']:.3f} R@5 {m['recall@5']:.3f}" for g, m in ev[kind].items()]
            lines.append(f"  {which} {kind}: " + "; ".join(parts))
        for b, m in ev.get("far", {}).items():
            lines.append(f"  {which} beta_far {b}: " + "; ".join(f"{g} R@5 {v['recall@5']:.3f}" for g, v in m.items()))
    return "\n".join(lines)


__all__ = ["format_metrics", "format_photo", "photo_report"]
