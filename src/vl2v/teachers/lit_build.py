"""``vl2v teacher build NAME``: train the offline LiT teacher (:mod:`vl2v.teachers.lit`).

Steps (each deterministic on the CPU, so the same inputs give the same weights):

1. fetch the pinned npm packages of ``lit_sources.json`` with ``npm pack`` into the package
   cache (sha256-checked, :mod:`vl2v.data.offline.fetch`) and refuse any source that is, or
   carries the artwork of, an OfflinePACS package (:func:`check_sources`);
2. collect (icon, caption) pairs: Iconify icons rendered with OfflinePACS's renderer, captions
   from the icon names (Unicode emoji names where the set maps the icon to a code point);
3. render every icon at the benchmark's size, hash its pixels and abort if any hash is an
   OfflinePACS image's (:func:`check_exclusion`); derive the training views (``line``: an
   edge-map line drawing of a colour icon);
4. run the locked EfficientNet-Lite2 tower once per view (features cached on disk by content);
5. split the pairs by concept (held-out concepts never trained on), train the head
   contrastively against the locked sentence embeddings of all training captions, measure
   held-out retrieval, and write ``head.safetensors`` + ``manifest.json`` atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vl2v.config import Fraction, NonNegFloat, NonNegInt, PosFloat, PosInt, config_dataclass, validated
from vl2v.errors import UserError
from vl2v.teachers import lit_photoval as pv
from vl2v.teachers.conse import conse_combine
from vl2v.teachers.lit import (
    BANK,
    FORMAT,
    MANIFEST,
    WEIGHTS,
    Head,
    Novelty,
    load_tower,
    novelty_score,
    teacher_dir,
)
from vl2v.teachers.lit_common import (
    benchmark_paths,
    make_pin,
    readings,
    score_quantiles,
    sources_file,
    tower_pass,
    validate,
)

BUILD_VERSION = 1  # bump when rendering, views or features change (invalidates the feature cache)
RENDER_SIZE = 224  # OfflinePACS's image size: pairs are rendered exactly as its images are
HASH_SIZE = 32  # pixel hashes are taken at this size

#: package names (or name parts) whose artwork OfflinePACS uses: never a LiT source
EXCLUDED_NAMES = ("twemoji", "noto", "fluent-emoji-3d", "symbola", "openmoji", "emojione", "openclipart",
                  "tuxpaint", "gcompris", "emoji-datasource-google", "emoji-datasource-twitter")


class LiTBuildError(UserError):
    """The LiT teacher cannot be built as asked (an excluded source, benchmark overlap, bad settings)."""


class BenchmarkOverlapError(LiTBuildError):
    """A training pair shows a picture of the benchmark (same pixels)."""


# --------------------------------------------------------------------------- config
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


# --------------------------------------------------------------------------- pairs
@dataclass
class Pair:
    """One icon and its caption. ``svg`` is the picture; ``concept`` groups pairs for the split."""

    id: str
    source: str  # set key
    caption: str
    svg: bytes
    views: tuple[str, ...] = ("orig",)
    member: str = ""

    @property
    def concept(self) -> str:
        return self.caption

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.svg).hexdigest()


def source_pins() -> list:
    return [make_pin(e) for e in sources_file()["packages"]]


def check_sources(pins: Sequence[Any], caption_keys: Iterable[str] = ("emojidata",)) -> None:
    """Refuse image sources that are OfflinePACS packages or carry their artwork."""
    from vl2v.data.offline.fetch import load_pins

    bench = {p.name for p in load_pins()}
    captions = set(caption_keys)
    for p in pins:
        if p.key in captions:
            continue  # names only, no pictures
        low = p.name.lower()
        if p.name in bench or any(x in low for x in EXCLUDED_NAMES):
            raise LiTBuildError(f"{p.name} cannot be a LiT teacher source: OfflinePACS is built from it or from the "
                                "same artwork (the teacher must never have seen the benchmark's pictures)")


_TONES = ("-light", "-medium-light", "-medium", "-medium-dark", "-dark", "-default")
_NUM = re.compile(r"(-\d+)+$")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[-_\s]+", name.lower()) if w]


def segment(token: str, vocab: set[str]) -> str:
    """Split a run-together name ('oncomingautomobile') into known words, if it splits completely."""
    if token in vocab or len(token) > 40:
        return token
    n = len(token)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for i in range(1, n + 1):
        for j in range(max(0, i - 20), i):
            w = token[j:i]
            if best[j] is not None and (w in vocab and (len(w) > 1 or w in ("a",))):
                cand = best[j] + [w]
                if best[i] is None or len(cand) < len(best[i]):
                    best[i] = cand
    return " ".join(best[n]) if best[n] else token


def clean_caption(name: str) -> str:
    name = _NUM.sub("", name.lower())
    return " ".join(_words(name))


def collect_pairs(roots: dict[str, Path], sets: dict[str, dict[str, Any]], emoji_json: Path | None) -> list[Pair]:
    """Every usable icon of every set with one caption; one icon per (set, caption)."""
    from vl2v.data.offline.iconify import IconSet

    uni: dict[str, str] = {}
    vocab: set[str] = set()
    if emoji_json is not None and emoji_json.is_file():
        for r in json.loads(emoji_json.read_text("utf-8")):
            nm = (r.get("name") or "").lower()
            if not nm:
                continue
            for code in (r.get("unified"), r.get("non_qualified")):
                if code:
                    uni[code.upper()] = nm
            vocab.update(_words(nm))
            for s in r.get("short_names", []):
                vocab.update(_words(s))
    loaded = {k: IconSet.load(roots[k] / "package" / "icons.json") for k in sets}
    for st in loaded.values():
        for nm in st.icons:
            if "-" in nm:
                vocab.update(_words(_NUM.sub("", nm)))
    vocab = {w for w in vocab if w.isalpha() and len(w) > 1}
    out: list[Pair] = []
    for key, spec in sets.items():
        st = loaded[key]
        chars_f = roots[key] / "package" / "chars.json"
        name_to_code: dict[str, str] = {}
        if chars_f.is_file():
            for cp, nm in json.loads(chars_f.read_text("utf-8")).items():
                name_to_code.setdefault(nm, cp.upper())
        seen: set[str] = set()
        for nm in sorted(st.icons):
            if any(nm.endswith(t) and nm[: -len(t)] in st for t in _TONES):
                continue  # skin-tone / default variants of an icon that is in the set anyway
            if nm.startswith(("brand-", "alpha-", "numeric-", "format-", "keyboard-", "language-")):
                continue
            code = name_to_code.get(nm)
            caption = uni.get(code, "") if code else ""
            caption = caption or clean_caption(nm)
            if " " not in caption and "-" not in nm:
                caption = segment(caption, vocab)
            words = caption.split()
            if not caption or caption in seen or len(words) > spec.get("max_words", 99) \
                    or set(words) & set(spec.get("drop_words", ())):
                continue
            seen.add(caption)
            svg = st.svg(nm).encode("utf-8")
            out.append(Pair(f"{key}-{nm}", key, caption, svg, tuple(spec.get("views", ["orig"])),
                            f"package/icons.json#{nm}"))
    return out


def split_concepts(pairs: Sequence[Pair], val_fraction: float) -> tuple[list[int], list[int]]:
    """Indices of training and held-out pairs; a concept is held out by a hash of its name (stable)."""
    tr, va = [], []
    for i, p in enumerate(pairs):
        h = int(hashlib.sha256(p.concept.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (va if h < val_fraction else tr).append(i)
    return tr, va


# --------------------------------------------------------------------------- rendering
def pixel_hash(img: Any) -> str:
    """sha256 of the RGB pixels at HASH_SIZE x HASH_SIZE (the picture as the benchmark would store it)."""
    from PIL import Image

    im = img.convert("RGB")
    if im.size != (HASH_SIZE, HASH_SIZE):
        im = im.resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BILINEAR, reducing_gap=None)
    return hashlib.sha256(im.tobytes()).hexdigest()


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


# --------------------------------------------------------------------------- features
@dataclass
class Features:
    feats: torch.Tensor  # [V, 1280] float16
    pair: list[int]  # pair index of each row
    view: list[str]  # view name of each row
    hashes: dict[str, str] = field(default_factory=dict)  # pair id -> orig pixel hash
    failed: dict[str, str] = field(default_factory=dict)  # pair id -> render error
    # torch threads of the tower pass that computed ``feats`` (their last bits depend on it; None: not recorded)
    threads: int | None = None


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


def extract_features(pairs: Sequence[Pair], tower: torch.nn.Module, tower_tag: str, cache_dir: Path | None,
                     workers: int = 1, progress: Callable[[int], None] = lambda n: None) -> Features:
    """Render every pair (views), hash its pixels and run the locked tower; cached by content in ``cache_dir``."""
    from safetensors.torch import load_file, save_file

    from vl2v.utils.io import atomic_path, atomic_write_json

    key = hashlib.sha256(json.dumps([BUILD_VERSION, tower_tag, RENDER_SIZE,
                                     [(p.id, p.sha256, list(p.views)) for p in pairs]]).encode()).hexdigest()[:24]
    if cache_dir is not None:
        ff, fm = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
        if ff.is_file() and fm.is_file():
            meta = json.loads(fm.read_text("utf-8"))
            progress(len(pairs))
            return Features(load_file(str(ff))["feats"], meta["pair"], meta["view"], meta["hashes"], meta["failed"],
                            meta.get("threads"))
    index = {p.id: i for i, p in enumerate(pairs)}
    jobs = [(p, RENDER_SIZE) for p in pairs]
    out = Features(torch.empty(0, 0), [], [], threads=torch.get_num_threads())
    chunks: list[torch.Tensor] = []
    pool = None
    if workers > 0 and len(jobs) > 64:
        import multiprocessing as mp

        pool = mp.get_context("spawn" if sys.platform == "darwin" else "fork").Pool(workers)
    try:
        for batch in _rendered(jobs, pool):
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
                               "threads": out.threads})
    return out


# --------------------------------------------------------------------------- training
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


GATE_GRID = (0.25, 0.5, 0.75, 1.0)  # beta_confident values the build reports on the held-out concepts
FAR_GRID = (0.5, 0.75, 1.0)  # beta_far values the build reports (held-out icons and photo validation)


# --------------------------------------------------------------------------- build
def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(r, c) / 1024.0  # Linux reports KiB


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


def style_of(pair: Pair, view: str) -> str:
    return "line" if view == "line" else ("colour" if "line" in pair.views else "mono")


def prepare_training(pairs: list[Pair], cfg: BuildConfig, cache_dir: Path | None, workers: int,
                     log: Callable[[str], None]) -> Prepared:
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
    va_row = {c: i for i, c in enumerate(va_caps)}
    t_tr = prep.encode([cfg.label_template.format(c=c) for c in tr_caps])
    x = fe.feats[rows_tr].float()
    y = torch.tensor([tr_row[prep.pairs[fe.pair[r]].caption] for r in rows_tr])
    log(f"training the head on {len(rows_tr)} views of {len(tr)} pairs ({len(tr_caps)} captions); "
        f"{len(va)} held-out pairs ({len(va_caps)} concepts)")
    head = train_head(x, y, t_tr, cfg, log)
    metrics: dict[str, Any] = {}
    if rows_va:
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
    counts = {"pairs": len(prep.pairs), "train_pairs": len(tr), "heldout_pairs": len(va),
              "train_views": len(rows_tr), "heldout_views": len(rows_va), "train_captions": len(tr_caps),
              "heldout_concepts": len(va_caps), "render_failures": len(fe.failed)}
    return head, metrics, counts, rows_tr


def default_benchmark() -> Path:
    from vl2v.utils.io import vl2v_home

    return vl2v_home() / "datasets" / "offline_pacs"


def fetch_pool(log: Callable[[str], None]) -> tuple[list[Pair], list[dict[str, Any]]]:
    """Fetch the pinned sources and collect their pairs; returns (pairs, source records for the manifest)."""
    from vl2v.data.offline.fetch import PackageCache, extract_package, fetch_packages
    from vl2v.utils.io import vl2v_home

    spec = sources_file()
    pins = source_pins()
    check_sources(pins, [spec["captions"]])
    cache = PackageCache(vl2v_home() / "packages")
    archives = fetch_packages(pins, cache)
    roots = {p.key: extract_package(p, archives[p.key], cache) for p in pins}
    sets = {k: v for k, v in spec["sets"].items()}
    emoji = roots[spec["captions"]] / "package" / "emoji.json"
    pairs = collect_pairs(roots, sets, emoji)
    n = {}
    for p in pairs:
        n[p.source] = n.get(p.source, 0) + 1
    records = [{"key": p.key, "package": p.name, "version": p.version, "licence": p.licence, "credit": p.credit,
                "sha256": p.sha256, "role": "captions" if p.key == spec["captions"] else "images",
                "pairs": n.get(p.key, 0), "views": list(sets.get(p.key, {}).get("views", []))} for p in pins]
    log(f"{len(pairs)} (icon, caption) pairs from {len(sets)} icon sets")
    return pairs, records


def build_teacher(name: str, *, out_dir: Path | None = None, config: BuildConfig | None = None,
                  pool: tuple[list[Pair], list[dict[str, Any]]] | None = None, benchmark: Path | None = None,
                  force: bool = False, workers: int = 1, cache_dir: Path | None = None,
                  photo_validation: bool | tuple[Path, set[str]] = True,
                  log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> Path:
    """Build LiT teacher ``name`` into ``out_dir`` (default ``<home>/teachers/NAME``); return the folder.

    ``pool`` injects (pairs, source records) instead of fetching (tests); ``benchmark`` is the
    OfflinePACS folder whose pixels no training picture may share (skipped, and said so, when absent).
    ``photo_validation``: True fetches the pinned photo-validation package (:mod:`lit_photoval`), False
    skips it, ``(folder, photo file names)`` uses a folder of ``<category>/<name>.png`` pictures (tests).
    """
    from safetensors.torch import save_file

    from vl2v.utils.hashing import file_digest
    from vl2v.utils.io import atomic_path, atomic_write_json, vl2v_home

    cfg = config or BuildConfig()
    t0 = time.time()
    folder = Path(out_dir) if out_dir is not None else teacher_dir(name)
    if (folder / MANIFEST).is_file() and not force:
        raise LiTBuildError(f"LiT teacher {name!r} is already built in {folder}; pass --force to build it again")
    if cache_dir is None:
        cache_dir = vl2v_home() / "teachers" / "_features"
    pairs, records = pool if pool is not None else fetch_pool(log)
    if pool is not None:
        check_sources([_RecordPin(r["key"], r.get("package", r["key"])) for r in records if r.get("role") != "captions"],
                      ())
    threads = torch.get_num_threads()
    prep = prepare_training(pairs, cfg, cache_dir, workers, log)
    # the exclusion check: no training picture may have a benchmark image's pixels
    bench = benchmark if benchmark is not None else default_benchmark()
    have_bench = bench.is_dir() and any(bench.iterdir())
    if have_bench:
        bh = benchmark_hashes(bench)
        check_exclusion(prep.features.hashes, bh)
        exclusion = {"benchmark": str(bench), "benchmark_images": len(bh), "pictures_checked": len(prep.features.hashes),
                     "overlaps": 0, "hash": f"sha256 of RGB pixels at {HASH_SIZE}x{HASH_SIZE} (bilinear) of the "
                                            f"{RENDER_SIZE}px render"}
        log(f"exclusion check: {len(prep.features.hashes)} pictures vs {len(bh)} OfflinePACS images: no overlap")
    else:
        exclusion = {"benchmark": str(bench), "skipped": "benchmark not built"}
        log(f"exclusion check skipped: no OfflinePACS at {bench}")
    torch.set_num_threads(1)  # same bits on any machine
    try:
        val_head, metrics, counts, val_rows = fit(prep, cfg, log)
        # the shipped head trains on every concept (held-out ones included) with the chosen recipe
        full = validated(BuildConfig, {**asdict(cfg), "val_fraction": 0.0})
        head, _, full_counts, rows = fit(prep, full, log)
    finally:
        torch.set_num_threads(threads)
    nov = None
    if "novelty" in metrics:
        nov = Novelty(**{k: metrics["novelty"][k] for k in ("k", "near", "width", "beta_far")})
        log(f"novelty gate: ConSE weight {cfg.beta_confident if cfg.beta_confident == cfg.beta else 'g(x)'} "
            f"at score >= {nov.near:.4f} (held-out icons' {cfg.novelty_quantile:g} quantile), {nov.beta_far:g} "
            f"at <= {nov.near - nov.width:.4f}")
    elif cfg.beta_far is not None:
        log("novelty gate off: no held-out concepts to set its threshold on")
    bank = prep.features.feats[rows].contiguous()  # float16, the shipped head's training views
    photo: dict[str, Any] | None = None
    if photo_validation is not False:
        photo = photo_report(prep, cfg, photo_validation, bench if have_bench else None, cache_dir,
                             (val_head, prep.features.feats[val_rows]), (head, bank), nov, log)
    counts["final_views"] = full_counts["train_views"]
    counts["final_captions"] = full_counts["train_captions"]
    folder.mkdir(parents=True, exist_ok=True)
    wfile = folder / WEIGHTS
    tensors = {k: v.contiguous() for k, v in head.state_dict().items()}
    if nov is not None:
        tensors[BANK] = bank
    with atomic_path(wfile) as tmp:
        # no metadata: safetensors writes a metadata map in an arbitrary order, which would change the file's
        # sha256 from build to build (the manifest holds the format and name instead)
        save_file(tensors, str(tmp))
    digest = file_digest(wfile)
    manifest = {
        "format": FORMAT, "name": name, "backend": "lit", "weights": WEIGHTS, "weights_sha256": digest,
        "head": {"in_dim": int(prep.features.feats.shape[1]) if prep.features.feats.numel() else 1280,
                 "hidden": cfg.hidden, "k": cfg.k, "beta": cfg.beta,
                 "beta_confident": cfg.beta_confident,
                 "novelty": asdict(nov) if nov is not None else None,
                 "label_template": cfg.label_template},
        "tower": f"tf_efficientnet_lite2:{prep.tower_tag} (locked)", "text": "all-MiniLM-L6-v2 (locked)",
        "training": {**asdict(cfg), "views": list(cfg.views), "build_version": BUILD_VERSION,
                     "render_size": RENDER_SIZE, "tower_threads": prep.features.threads},
        "sources": records, "counts": counts, "validation": metrics, "photo_validation": photo,
        "exclusion_check": exclusion,
        "build_seconds": round(time.time() - t0, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    atomic_write_json(folder / MANIFEST, manifest)
    log(f"LiT teacher {name!r} written to {folder} (weights sha256 {digest[:16]}..., "
        f"{manifest['build_seconds']:.0f}s, peak RSS {manifest['peak_rss_mb']:.0f} MB)")
    return folder


def photo_report(prep: Prepared, cfg: BuildConfig, source: bool | tuple[Path, set[str]], bench: Path | None,
                 cache_dir: Path | None, val: tuple[Head, torch.Tensor], shipped: tuple[Head, torch.Tensor],
                 nov: Novelty | None, log: Callable[[str], None]) -> dict[str, Any]:
    """Photo validation of the validation head (whose held-out numbers chose the recipe) and the shipped head;
    ``{"skipped": why}`` when the package cannot be had (it is validation only: the build goes on)."""
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
        "near_duplicate_check": ({"benchmark": str(bench), "cosine_at_least": pv.COSINE, "dhash_bits_at_most":
                                  pv.DHASH_BITS, "dropped": ps.dropped} if bench is not None
                                 else {"skipped": "benchmark not built: pictures may repeat benchmark artwork"}),
        "validation_head": pv.evaluate(ps, val[0], F.normalize(val[1].float(), dim=-1), nov, cq, targets, cfg,
                                       FAR_GRID if nov is not None else ()),
        "shipped_head": pv.evaluate(ps, shipped[0], F.normalize(shipped[1].float(), dim=-1), nov, cq, targets, cfg),
    }
    log(f"photo validation: {out['pictures']} pictures ({out['photos']} photographs), "
        f"{len(ps.dropped)} near-duplicates of benchmark images dropped")
    return out


@dataclass(frozen=True)
class _RecordPin:
    key: str
    name: str


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


__all__ = ["BuildConfig", "Pair", "build_teacher", "check_exclusion", "check_sources", "collect_pairs",
           "pixel_hash", "line_view", "benchmark_hashes", "BenchmarkOverlapError", "LiTBuildError"]
