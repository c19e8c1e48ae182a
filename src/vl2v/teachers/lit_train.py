"""The LiT build's training: its settings (:class:`BuildConfig`), the locked models and features a head
trains on (:class:`Prepared`), the contrastive head training, and the fit on the training concepts with
its held-out readings (recall per style, the confidence-gate and novelty-gate grids)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Collection

import torch
import torch.nn.functional as F

from vl2v.config import Fraction, NonNegFloat, NonNegInt, PosFloat, PosInt, config_dataclass
from vl2v.teachers.conse import conse_combine
from vl2v.teachers.lit import Head, Novelty, load_tower, novelty_score
from vl2v.teachers.lit_common import LiTBuildError, readings, score_quantiles, validate
from vl2v.teachers.lit_pairs import Pair, split_concepts
from vl2v.teachers.lit_render import Features, extract_features

GATE_GRID = (0.25, 0.5, 0.75, 1.0)  # beta_confident values the build reports on the held-out concepts
FAR_GRID = (0.5, 0.75, 1.0)  # beta_far values the build reports (held-out icons and photo validation)


@config_dataclass(frozen=True)
class BuildConfig:
    """The LiT build's settings (``vl2v teacher build`` options; the defaults are the shipped teacher's)."""

    hidden: NonNegInt = 1024  # 0: linear head; else a one-hidden-layer MLP with a linear shortcut (chosen on held-out concepts)
    epochs: PosInt = 30
    batch_size: PosInt = 512
    lr: NonNegFloat = 1e-3
    weight_decay: NonNegFloat = 1e-4
    temperature: PosFloat = 0.05
    beta: Fraction = 0.25  # weight of the ConSE embedding in the mix (0: head only; chosen on held-out concepts)
    # the ConSE weight when the ImageNet classifier is certain (top probability 1); in between, linear in that
    # probability; equal to beta: a fixed weight. Chosen with the novelty gate on held-out icons + photo
    # validation (0.25: the confidence gate is off), see docs/teachers.md.
    beta_confident: Fraction = 0.25
    # the novelty gate: the ConSE weight for a picture far from every training view (None: no novelty gate);
    # the ramp starts at the novelty_quantile of the held-out icons' scores and reaches beta_far novelty_width
    # below it; the score is the mean cosine to the novelty_k nearest training views
    beta_far: Fraction | None = 0.75
    novelty_width: PosFloat = 0.2
    novelty_quantile: Fraction = 0.1
    novelty_k: PosInt = 10
    k: PosInt = 10  # ConSE top-k
    label_template: str = "a photo of a {c}"  # captions and ImageNet class names alike
    views: tuple[str, ...] = ("orig", "line")  # the views used for training (a set's own list caps it)
    val_fraction: Fraction = 0.125  # share of concepts held out
    seed: int = 0


# --------------------------------------------------------------------------- the head
def conse_parts(tower: torch.nn.Module, class_text: torch.Tensor, feats: torch.Tensor, k: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ConSE embeddings (unit length) and the ImageNet logits of cached tower features."""
    with torch.no_grad():
        logits = tower.classifier(feats.float())
        return F.normalize(conse_combine(logits, class_text, k), dim=-1), logits


def train_head(x: torch.Tensor, y: torch.Tensor, text: torch.Tensor, cfg: BuildConfig,
               log: Callable[[str], None] = lambda s: None) -> Head:
    """Contrastive (image -> caption softmax over all training captions) training of the head; deterministic."""
    torch.manual_seed(cfg.seed)
    head = Head(x.shape[1], text.shape[1], cfg.hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n = x.shape[0]
    steps_per_epoch = max(1, math.ceil(n / cfg.batch_size))
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(cfg.seed)
    scale = 1.0 / cfg.temperature
    for ep in range(cfg.epochs):
        perm = torch.randperm(n, generator=g)
        tot = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            logits = scale * F.normalize(head(x[idx]), dim=-1) @ text.T
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        if ep == 0 or ep + 1 == cfg.epochs or (ep + 1) % 10 == 0:
            log(f"  epoch {ep + 1}/{cfg.epochs}: loss {tot / n:.3f}")
    head.eval()
    return head


# --------------------------------------------------------------------------- what training reads
@dataclass
class Prepared:
    """Everything the head training reads: features, captions, the split (reusable for design sweeps)."""

    pairs: list[Pair]
    features: Features
    tower: torch.nn.Module
    tower_tag: str
    class_text: torch.Tensor
    encode: Callable[[list[str]], torch.Tensor]
    captions: list[str]
    cap_index: list[int]  # caption row of each pair

    def without(self, ids: Collection[str]) -> Prepared:
        """The same without the pairs ``ids`` (their views, captions only they had) -- the near-duplicates."""
        keep = [i for i, p in enumerate(self.pairs) if p.id not in ids]
        renumber = {old: new for new, old in enumerate(keep)}
        pairs = [self.pairs[i] for i in keep]
        feats = self.features.select([r for r, pi in enumerate(self.features.pair) if pi in renumber], renumber)
        captions = sorted({p.caption for p in pairs})
        row = {c: i for i, c in enumerate(captions)}
        return replace(self, pairs=pairs, features=feats, captions=captions, cap_index=[row[p.caption] for p in pairs])


def style_of(pair: Pair, view: str) -> str:
    return "line" if view == "line" else ("colour" if "line" in pair.views else "mono")


def prepare_training(pairs: list[Pair], cfg: BuildConfig, cache_dir: Path | None, workers: int,
                     log: Callable[[str], None]) -> Prepared:
    """Load the locked tower and sentence encoder, render and embed every pair (:func:`extract_features`)."""
    from vl2v.teachers.conse import imagenet_class_names, load_sentence_encoder
    from vl2v.utils.progress import bar

    tower, tag = load_tower()
    st, _ = load_sentence_encoder(None)

    def encode(texts: list[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, 384)
        e = st.encode(texts, convert_to_tensor=True, batch_size=128, show_progress_bar=False)
        return F.normalize(e.float().cpu(), dim=-1)

    class_text = encode([cfg.label_template.format(c=n) for n in imagenet_class_names()])
    pbar = bar(len(pairs), desc="render + tower", unit="icon")
    done = [0, time.time()]

    def tick(n: int) -> None:
        pbar.update(n)
        done[0] += n
        if done[0] % 2048 < n and done[0] < len(pairs):
            log(f"  {done[0]}/{len(pairs)} icons rendered and embedded ({time.time() - done[1]:.0f}s)")

    feats = extract_features(pairs, tower, tag, cache_dir, workers, progress=tick)
    pbar.close()
    captions = sorted({p.caption for p in pairs})
    row = {c: i for i, c in enumerate(captions)}
    return Prepared(pairs, feats, tower, tag, class_text, encode, captions, [row[p.caption] for p in pairs])


# --------------------------------------------------------------------------- the fit
def _heldout_metrics(prep: Prepared, cfg: BuildConfig, head: Head, rows_tr: list[int], rows_va: list[int],
                     va_caps: list[str]) -> dict[str, Any]:
    """The held-out readings of ``head``: per style, the novelty gate's threshold and beta_far grid, the
    confidence-gate grid, the ImageNet classifier's mean top probability."""
    fe = prep.features
    va_row = {c: i for i, c in enumerate(va_caps)}
    t_va = prep.encode([cfg.label_template.format(c=c) for c in va_caps])
    xv = fe.feats[rows_va].float()
    yv = torch.tensor([va_row[prep.pairs[fe.pair[r]].caption] for r in rows_va])
    cv = conse_parts(prep.tower, prep.class_text, xv, cfg.k)
    styles = [style_of(prep.pairs[fe.pair[r]], fe.view[r]) for r in rows_va]
    groups = {"all": torch.ones(len(rows_va), dtype=torch.bool)}
    for s in ("colour", "line", "mono"):
        m = torch.tensor([t == s for t in styles])
        if m.any():
            groups[s] = m
    top = cv[1].softmax(dim=-1).amax(dim=-1)
    with torch.no_grad():
        hv = head(xv)
    metrics: dict[str, Any] = {}
    nv = None
    if cfg.beta_far is not None:
        score = novelty_score(xv, F.normalize(fe.feats[rows_tr].float(), dim=-1), cfg.novelty_k)
        near = float(torch.quantile(score, cfg.novelty_quantile))
        nv = (Novelty(cfg.novelty_k, near, cfg.novelty_width, cfg.beta_far), score)
        metrics["novelty"] = {**asdict(nv[0]), "quantile": cfg.novelty_quantile,
                              "heldout_scores": score_quantiles(score),
                              "far": {f"{b:g}": validate(hv, cv, yv, t_va, groups, cfg.beta, cfg.beta_confident,
                                                         (replace(nv[0], beta_far=b), score))["all"]
                                      for b in FAR_GRID}}
    metrics.update({
        **readings(hv, cv, yv, t_va, groups, cfg, nv),
        "gate": {f"{b:g}": validate(hv, cv, yv, t_va, groups, cfg.beta, b, nv)["all"]
                 for b in GATE_GRID if b >= cfg.beta},
        "top_probability": {g: float(top[m].mean()) for g, m in groups.items()},
        "candidates": len(va_caps)})
    return metrics


def fit(prep: Prepared, cfg: BuildConfig, log: Callable[[str], None] = lambda s: None
        ) -> tuple[Head, dict[str, Any], dict[str, Any], list[int]]:
    """Train on the training concepts; return the head, validation metrics, counts and the training rows
    (the novelty gate's bank). With held-out concepts the gate's ``near`` is measured here (their scores'
    ``novelty_quantile`` against the training views) and returned in ``metrics['novelty']``."""
    tr, va = split_concepts(prep.pairs, cfg.val_fraction)
    tr_set, va_set = set(tr), set(va)
    fe = prep.features
    rows_tr = [r for r, (pi, v) in enumerate(zip(fe.pair, fe.view)) if pi in tr_set and v in cfg.views]
    rows_va = [r for r, pi in enumerate(fe.pair) if pi in va_set]
    tr_caps = sorted({prep.pairs[i].caption for i in tr})
    va_caps = sorted({prep.pairs[i].caption for i in va})
    if not rows_tr:
        raise LiTBuildError("no training pairs left after rendering and the concept split")
    tr_row = {c: i for i, c in enumerate(tr_caps)}
    t_tr = prep.encode([cfg.label_template.format(c=c) for c in tr_caps])
    x = fe.feats[rows_tr].float()
    y = torch.tensor([tr_row[prep.pairs[fe.pair[r]].caption] for r in rows_tr])
    log(f"training the head on {len(rows_tr)} views of {len(tr)} pairs ({len(tr_caps)} captions); "
        f"{len(va)} held-out pairs ({len(va_caps)} concepts)")
    head = train_head(x, y, t_tr, cfg, log)
    metrics = _heldout_metrics(prep, cfg, head, rows_tr, rows_va, va_caps) if rows_va else {}
    counts = {"pairs": len(prep.pairs), "train_pairs": len(tr), "heldout_pairs": len(va),
              "train_views": len(rows_tr), "heldout_views": len(rows_va), "train_captions": len(tr_caps),
              "heldout_concepts": len(va_caps), "render_failures": len(fe.failed)}
    return head, metrics, counts, rows_tr


__all__ = ["FAR_GRID", "GATE_GRID", "BuildConfig", "Prepared", "conse_parts", "fit", "prepare_training",
           "style_of", "train_head"]
