"""What the LiT teacher's build (:mod:`vl2v.teachers.lit_build` and the modules it orchestrates:
``lit_sources``, ``lit_pairs``, ``lit_render``, ``lit_overlap``, ``lit_train``, ``lit_report``) and its photo
validation (:mod:`vl2v.teachers.lit_photoval`) share: the build's errors, the pinned sources file, the
benchmark's image list, the locked tower's feature pass, and the retrieval readings every validation reports.
All of them import it; it imports none of them."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vl2v.errors import UserError
from vl2v.teachers.lit import LITE_MEAN, LITE_STD, Novelty, gated_weight, mix, mix_weight


class LiTBuildError(UserError):
    """The LiT teacher cannot be built as asked (an excluded source, benchmark overlap, bad settings)."""


class BenchmarkOverlapError(LiTBuildError):
    """A training pair shows a picture of the benchmark (same pixels)."""


# --------------------------------------------------------------------------- sources
def sources_file() -> dict[str, Any]:
    """The parsed ``lit_sources.json`` (the build's packages and the photo-validation pin)."""
    return json.loads(resources.files("vl2v.teachers").joinpath("lit_sources.json").read_text("utf-8"))


def make_pin(entry: dict[str, Any]) -> Any:
    """A ``lit_sources.json`` package entry -> :class:`~vl2v.data.offline.fetch.PackagePin` (keys the pin does
    not know are left out)."""
    from dataclasses import fields

    from vl2v.data.offline.fetch import PackagePin

    known = {f.name for f in fields(PackagePin)}
    e = {k: v for k, v in entry.items() if k in known}
    e["extract"] = tuple(e.get("extract", ()))
    e["skip_ext"] = tuple(e.get("skip_ext", ()))
    return PackagePin(**e)


def benchmark_paths(bench: Path) -> list[str]:
    """Every image of a built OfflinePACS folder (relative paths): its manifest's order, else every PNG, sorted."""
    man = bench / "manifest.jsonl"
    if man.is_file():
        return [json.loads(line)["path"] for line in man.read_text("utf-8").splitlines() if line.strip()]
    return sorted(p.relative_to(bench).as_posix() for p in bench.rglob("*.png"))


# --------------------------------------------------------------------------- features
def tower_pass(pictures: Sequence[np.ndarray], tower: torch.nn.Module) -> torch.Tensor:
    """The locked tower's pooled features of prepared pictures (uint8 HxWx3), as one batch -> [N, 1280] float16:
    the build's evaluation view (shortest-side resize to the tower's size, centre crop) and normalisation."""
    from vl2v.data.transforms import center_view
    from vl2v.students.efficientnet_lite import LITE_SIZES

    size = LITE_SIZES[2]
    x = torch.stack([center_view(torch.from_numpy(np.array(a)).permute(2, 0, 1), size) for a in pictures])
    x = ((x - torch.tensor(LITE_MEAN).view(1, 3, 1, 1)) / torch.tensor(LITE_STD).view(1, 3, 1, 1))
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return tower.forward_head(tower.forward_features(x), pre_logits=True).to(torch.float16)


# --------------------------------------------------------------------------- readings
def retrieval(emb: torch.Tensor, y: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """Image -> caption recall@1/@5 (text: the candidate captions' embeddings; y: the true row)."""
    if len(y) == 0:
        return {"n": 0, "recall@1": float("nan"), "recall@5": float("nan")}
    sims = F.normalize(emb, dim=-1) @ text.T
    true = sims.gather(1, y.view(-1, 1))
    rank = (sims > true).sum(dim=1)
    return {"n": int(len(y)), "recall@1": float((rank < 1).float().mean()), "recall@5": float((rank < 5).float().mean())}


def validate(h: torch.Tensor, conse: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor, text: torch.Tensor,
             groups: dict[str, torch.Tensor], beta: float, beta_confident: float | None = None,
             novelty: tuple[Novelty, torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
    """Retrieval per group of the mixed embedding (``h``: the head's output; ``beta_confident`` None: a fixed
    weight; ``novelty``: the gate's settings and each row's novelty score)."""
    c, logits = conse
    b = mix_weight(logits, beta, beta if beta_confident is None else beta_confident)
    if novelty is not None:
        b = gated_weight(b, novelty[1], novelty[0])
    emb = mix(h, c, b)
    return {g: retrieval(emb[m], y[m], text) for g, m in groups.items()}


def readings(h: torch.Tensor, conse: tuple[torch.Tensor, torch.Tensor], y: torch.Tensor, text: torch.Tensor,
             groups: dict[str, torch.Tensor], cfg: Any, novelty: tuple[Novelty, torch.Tensor] | None = None
             ) -> dict[str, dict[str, dict[str, float]]]:
    """What every validation reports (see :func:`validate`): the shipped mix (``lit``), the same without the
    novelty gate, the head alone and ConSE alone (``cfg``: a :class:`~vl2v.teachers.lit_train.BuildConfig`,
    for its ``beta`` and ``beta_confident``)."""
    return {"lit": validate(h, conse, y, text, groups, cfg.beta, cfg.beta_confident, novelty),
            "no_novelty": validate(h, conse, y, text, groups, cfg.beta, cfg.beta_confident),
            "head_only": validate(h, conse, y, text, groups, 0.0),
            "conse_only": validate(h, conse, y, text, groups, 1.0)}


def score_quantiles(score: torch.Tensor, qs: tuple[float, ...] = (0.1, 0.25, 0.5, 0.75, 0.9)) -> dict[str, float]:
    """A manifest's summary of novelty scores: quantile -> value (4 decimals)."""
    return {f"{q:g}": round(float(torch.quantile(score, q)), 4) for q in qs}


__all__ = ["BenchmarkOverlapError", "LiTBuildError", "benchmark_paths", "make_pin", "readings", "retrieval", "score_quantiles", "sources_file", "tower_pass",
           "validate"]
