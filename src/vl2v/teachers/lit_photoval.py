"""Photo validation for the LiT teacher: labelled pictures from a Debian package that is not the benchmark.

The held-out icon concepts cannot say how the teacher treats photographs (the head is trained on
icons only). qABCs (Debian ``qabcs-data``, pinned in ``lit_sources.json``) ships a few hundred
named pictures of animals, food, instruments and toys, most of them photographs cut out on white,
the rest cartoons; which ones are photographs was judged by eye once and is listed in the pin's
``photos``. The pictures are only ever *validated* on, never trained on.

qABCs reuses some OpenClipart and GCompris drawings that OfflinePACS also uses, so before use every
picture within a near-duplicate distance of a benchmark image (tower-feature cosine >= ``COSINE``
or a difference hash within ``DHASH_BITS`` bits) is dropped and listed in the manifest: the same check, with
the same thresholds, that the build runs over every training view (:mod:`vl2v.teachers.lit_overlap`).

Each kept picture is ranked against the captions of all kept pictures (``"a photo of a {name}"``):
image -> caption recall@1 / recall@5, for the ``photo`` and ``drawn`` groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from vl2v.teachers.lit import novelty_score
from vl2v.teachers.lit_common import make_pin, readings, score_quantiles, sources_file, validate
from vl2v.teachers.lit_overlap import COSINE, DHASH_BITS, benchmark_features, near_duplicates, tower_features


@dataclass
class PhotoSet:
    """The kept validation pictures: captions, the photo flag, tower features; what was dropped and why."""

    files: list[str]
    captions: list[str]
    photo: torch.Tensor  # bool [N]
    feats: torch.Tensor  # [N, 1280], float16-rounded like the training features
    dropped: list[dict[str, Any]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)


def spec() -> dict[str, Any]:
    return sources_file()["photo_validation"]


def caption_of(rel: str) -> str:
    """``animals/eagle-owl.png`` -> ``eagle owl``."""
    return Path(rel).stem.replace("_", " ").replace("-", " ").strip()


def fetch_root(log: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """Fetch the pinned package (apt-get download, sha256-checked) and return its pictures folder and record."""
    from vl2v.data.offline.fetch import PackageCache, extract_package, fetch_packages
    from vl2v.utils.io import vl2v_home

    sp = spec()
    pin = make_pin(sp["pin"])
    cache = PackageCache(vl2v_home() / "packages")
    archive = fetch_packages([pin], cache)[pin.key]
    root = extract_package(pin, archive, cache) / sp["root"]
    log(f"photo validation: {pin.label} ({pin.licence})")
    return root, {"package": pin.name, "version": pin.version, "licence": pin.licence, "credit": pin.credit,
                  "sha256": pin.sha256, "role": "photo validation (never trained on)"}


def load_pictures(root: Path, size: int) -> tuple[list[str], list[Any]]:
    """Every ``<category>/<name>.png`` under ``root``, prepared like a benchmark image (sorted by path)."""
    from PIL import Image

    from vl2v.data.offline import imaging as im

    files, imgs = [], []
    for path in sorted(root.glob("*/*.png")):
        with Image.open(path) as raw:
            try:
                imgs.append(im.prepare(raw.convert("RGBA"), size).image)
            except im.EmptyImageError:
                continue
        files.append(path.relative_to(root).as_posix())
    return files, imgs


def prepare_photos(root: Path, photos: set[str], tower: torch.nn.Module, tower_tag: str, bench: Path | None,
                   cache_dir: Path | None, size: int, source: dict[str, Any] | None = None) -> PhotoSet:
    """Load, filter (near-duplicates of the benchmark out) and embed the validation pictures."""
    from vl2v.data.offline import imaging as im

    files, imgs = load_pictures(root, size)
    feats = tower_features(imgs, tower)
    dropped: list[dict[str, Any]] = []
    keep = list(range(len(files)))
    if bench is not None:
        bpaths, bfeats, bdh = benchmark_features(bench, tower, tower_tag, cache_dir)
        dups = near_duplicates(feats, [im.dhash(a) for a in imgs], bfeats, bdh, bpaths)
        dropped = [{"file": files[i], **d} for i, d in sorted(dups.items())]
        keep = [i for i in keep if i not in dups]
    return PhotoSet([files[i] for i in keep], [caption_of(files[i]) for i in keep],
                    torch.tensor([files[i] in photos for i in keep], dtype=torch.bool), feats[keep], dropped,
                    dict(source or {}))


def caption_targets(ps: PhotoSet, encode: Callable[[list[str]], torch.Tensor], template: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate captions' text embeddings (every kept picture's caption, once, sorted) and each picture's
    row among them: what :func:`evaluate` ranks against, for any head."""
    caps = sorted(set(ps.captions))
    row = {c: i for i, c in enumerate(caps)}
    return encode([template.format(c=c) for c in caps]), torch.tensor([row[c] for c in ps.captions], dtype=torch.long)


def evaluate(ps: PhotoSet, head: torch.nn.Module, bank: torch.Tensor, novelty: Any, conse: tuple[torch.Tensor, torch.Tensor],
             targets: tuple[torch.Tensor, torch.Tensor], cfg: Any, far_grid: tuple[float, ...] = ()) -> dict[str, Any]:
    """Retrieval (photo / drawn) of the chosen mix, the mix without the novelty gate, head and ConSE alone,
    and the chosen mix at each ``beta_far`` of ``far_grid``. ``conse``: (ConSE embeddings, logits) of ``ps``;
    ``targets``: :func:`caption_targets`."""
    from dataclasses import replace

    text, y = targets
    groups = {g: m for g, m in (("photo", ps.photo), ("drawn", ~ps.photo)) if bool(m.any())}
    x = ps.feats.float()
    with torch.no_grad():
        h = head(x)
    nv = None if novelty is None else (novelty, novelty_score(x, bank, novelty.k))
    out: dict[str, Any] = {**readings(h, conse, y, text, groups, cfg, nv), "candidates": int(text.shape[0])}
    if nv is not None:
        out["far"] = {f"{b:g}": validate(h, conse, y, text, groups, cfg.beta, cfg.beta_confident,
                                         (replace(novelty, beta_far=b), nv[1])) for b in far_grid}
        out["scores"] = {g: score_quantiles(nv[1][m]) for g, m in groups.items()}
    return out


__all__ = ["COSINE", "DHASH_BITS", "PhotoSet", "benchmark_features", "caption_of", "caption_targets", "evaluate",
           "fetch_root", "load_pictures", "near_duplicates", "prepare_photos", "spec", "tower_features"]
