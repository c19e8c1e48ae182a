"""Matplotlib figures of a set of runs (for the HTML report).

Every function takes :class:`RunView` s (one per run directory) and returns a
``matplotlib.figure.Figure``, or ``None`` when the runs hold nothing to draw
(no lambda sweep, no predictions, ...). Figures are built without pyplot, so
no global state or display backend is involved. Algorithms are drawn in the
protocol's order (:func:`vl2v.evaluation.tables.protocol_order`), and a mean
over one trial seed gets no error bar (one trial has no standard error).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from vl2v.evaluation.tables import OLD_BILL, TeacherBill, mean_se, protocol_order, teacher_bills
from vl2v.runs.layout import RunDir

ACC_BLUE, ACC_ORANGE, LOSS_GREY = "#1f77b4", "#ff7f0e", "#555555"
SEED_STYLES = ["-", "--", ":", "-."]
PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c",
           "#ccb974", "#64b5cd"]


@dataclass
class RunView:
    """What the figures need from one run directory."""

    path: Path
    label: str  # algorithm (+ hyperparameters), as in the tables
    algorithm: str
    target: int
    seed: int
    domains: list[str]
    summary: dict[str, Any]  # final.json (or the same computed from records, for unfinished runs)
    records: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    _predictions: Any = None

    @property
    def target_name(self) -> str:
        return self.domains[self.target] if 0 <= self.target < len(self.domains) else str(self.target)

    @property
    def ood(self) -> float | None:
        v = (self.summary.get("selected") or {}).get("ood_acc")
        return None if v is None else float(v)

    @property
    def id(self) -> float | None:
        v = (self.summary.get("selected") or {}).get("id_acc")
        return None if v is None else float(v)

    @property
    def incomplete(self) -> bool:
        return bool(self.summary.get("incomplete"))

    @property
    def lam(self) -> float | None:
        """The run's lambda (image-term weight; ADiP's ``lam``): the hyperparameter its algorithm's registry info
        names in ``lambda_hparam``, from the run's hyperparameters (its default if unrecorded); None for an
        algorithm without one."""
        info = algorithm_info(self.algorithm)
        key = info.lambda_hparam if info is not None else None
        if not key:
            return None
        hp = self.config.get("hparams") or {}
        if key in hp:
            return float(hp[key])
        spec = dict(self.config.get("spec", {}).get("hparams") or [])
        return float(spec[key]) if key in spec else float(getattr(info.hparams_cls(), key))

    @property
    def predictions(self) -> dict[str, Any] | None:
        if self._predictions is None:
            try:
                self._predictions = RunDir(self.path).load_predictions() or False
            except (OSError, ValueError):
                self._predictions = False
        return self._predictions or None


def algorithm_info(algorithm: str) -> Any:
    """The registry info (:class:`~vl2v.methods.registry.AlgorithmInfo`, capability flags) of ``algorithm``; None
    for one this process has not registered (a plugin's run read without its plugin)."""
    from vl2v.methods import ALGORITHMS

    return ALGORITHMS.get(algorithm) if algorithm in ALGORITHMS else None


def label_colors(labels: Sequence[str]) -> dict[str, str]:
    return {lab: PALETTE[i % len(PALETTE)] for i, lab in enumerate(labels)}


def ordered_labels(runs: Sequence[RunView]) -> list[str]:
    """The runs' labels in the protocol's order (the tables' row order)."""
    return protocol_order(r.label for r in runs)


def _yerr(ses: list[float], ns: list[int]) -> np.ndarray | None:
    """Error-bar lengths, NaN (no bar) where a mean is over one trial; None when no mean has two."""
    if not any(n > 1 for n in ns):
        return None
    return np.array([se if n > 1 else np.nan for se, n in zip(ses, ns)])


def _pct(x: float) -> float:
    return 100.0 * x


def _new(w: float, h: float) -> Figure:
    return Figure(figsize=(w, h), dpi=110, layout="constrained")


# --------------------------------------------------------------------------- OOD bars
def _rows_with_swad(runs: Sequence[RunView]) -> dict[str, dict[int, dict[int, tuple[float, float]]]]:
    """{row label: {target: {seed: (ood, id)}}}, with '<label> + SWAD' rows where present."""
    rows: dict[str, dict[int, dict[int, tuple[float, float]]]] = defaultdict(lambda: defaultdict(dict))
    for r in runs:
        if r.ood is not None:
            rows[r.label][r.target][r.seed] = (r.ood, r.id if r.id is not None else float("nan"))
        sw = r.summary.get("swad") or {}
        if "ood_acc" in sw:
            rows[f"{r.label} + SWAD"][r.target][r.seed] = (float(sw["ood_acc"]), float(sw.get("id_acc", float("nan"))))
    return rows


def ood_bars(runs: Sequence[RunView], domains: list[str]) -> Figure | None:
    """Grouped bars: OOD accuracy per target domain (and Avg) for every algorithm, SE over trials."""
    rows = _rows_with_swad(runs)
    if not rows:
        return None
    targets = sorted({t for cells in rows.values() for t in cells})
    full = targets == list(range(len(domains)))
    groups = [domains[t] if t < len(domains) else str(t) for t in targets] + (["Avg"] if full and len(targets) > 1 else [])
    labels = protocol_order(rows)
    colors = label_colors(labels)
    fig = _new(max(6.0, 1.1 + 0.55 * len(groups) * max(2, len(labels)) * 0.6), 3.8)
    ax = fig.add_subplot()
    width = 0.8 / len(labels)
    x = np.arange(len(groups))
    for i, lab in enumerate(labels):
        means, ses, ns = [], [], []
        for t in targets:
            vals = [v[0] for v in rows[lab].get(t, {}).values()]
            m, se = mean_se(vals)
            means.append(_pct(m)), ses.append(_pct(se) if len(vals) > 1 else 0.0), ns.append(len(vals))
        if "Avg" in groups:
            seeds = set.intersection(*(set(rows[lab].get(t, {})) for t in targets)) if targets else set()
            vals = [float(np.mean([rows[lab][t][s][0] for t in targets])) for s in sorted(seeds)]
            m, se = mean_se(vals)
            means.append(_pct(m)), ses.append(_pct(se) if len(vals) > 1 else 0.0), ns.append(len(vals))
        pos = x - 0.4 + width * (i + 0.5)
        ok = ~np.isnan(np.array(means))  # a target this algorithm was not run on: no bar
        hatch = "//" if lab.endswith("+ SWAD") else None
        yerr = _yerr([s for s, k in zip(ses, ok) if k], [n for n, k in zip(ns, ok) if k])
        ax.bar(pos[ok], np.array(means)[ok], width * 0.92, yerr=yerr, capsize=2.5, color=colors[lab],
               label=lab, hatch=hatch, edgecolor="white", linewidth=0.5, error_kw={"elinewidth": 1.0})
        for p, m, se in zip(pos, means, ses):
            if not math.isnan(m):
                ax.text(p, m + se + 1.0, f"{m:.0f}", ha="center", va="bottom", fontsize=6.5, color="#333")
    ax.set_xticks(x, groups)
    ax.set_ylabel("OOD accuracy (%)")
    ax.set_xlabel("held-out target domain")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    n_seeds = len({r.seed for r in runs})
    ax.set_title("Out-of-domain accuracy per target domain " + (f"(mean ± SE over {n_seeds} trial seeds)" if n_seeds > 1
                 else "(one trial seed: no standard error)"), fontsize=10)
    ax.legend(fontsize=7, ncol=min(4, len(labels)), loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    return fig


# --------------------------------------------------------------------------- ID vs OOD
def id_vs_ood(runs: Sequence[RunView], domains: list[str]) -> Figure | None:
    """Each algorithm: mean ID (x) vs mean OOD (y) accuracy over its runs; faint dots per run."""
    rows = _rows_with_swad(runs)
    if not rows:
        return None
    labels = protocol_order(rows)
    colors = label_colors(labels)
    fig = _new(5.6, 4.6)
    ax = fig.add_subplot()
    lo, hi = 100.0, 0.0
    for lab in labels:
        cells = rows[lab]
        pts = [(v[1], v[0]) for t in cells for v in cells[t].values() if not math.isnan(v[1])]
        if not pts:
            continue
        ids, oods = np.array([p[0] for p in pts]) * 100, np.array([p[1] for p in pts]) * 100
        ax.scatter(ids, oods, s=14, color=colors[lab], alpha=0.3, linewidths=0)
        seeds = sorted({s for t in cells for s in cells[t]})
        per_seed = [(np.mean([cells[t][s][1] for t in cells if s in cells[t]]),
                     np.mean([cells[t][s][0] for t in cells if s in cells[t]])) for s in seeds]
        mi, si = mean_se([p[0] for p in per_seed])
        mo, so = mean_se([p[1] for p in per_seed])
        ax.errorbar(_pct(mi), _pct(mo), xerr=_pct(si) if len(seeds) > 1 else None, yerr=_pct(so) if len(seeds) > 1 else None,
                    fmt="D" if lab.endswith("+ SWAD") else "o", ms=8, color=colors[lab], mec="black", mew=0.6,
                    capsize=3, label=lab, zorder=3)
        lo, hi = min(lo, ids.min(), oods.min()), max(hi, ids.max(), oods.max())
    pad = 5
    lo, hi = max(0.0, lo - pad), min(100.0, hi + pad)
    ax.plot([lo, hi], [lo, hi], color="#999", lw=0.8, ls="--", zorder=0)
    at = lo + 0.93 * (hi - lo)
    ax.text(at, at, "ID = OOD ", fontsize=7, color="#777", ha="right", va="bottom", rotation=45, rotation_mode="anchor")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("in-domain accuracy (%) (source domains' held-out split)")
    ax.set_ylabel("out-of-domain accuracy (%) (target domain)")
    se = "± SE over seeds" if len({r.seed for r in runs}) > 1 else "(one trial seed: no SE)"
    ax.set_title(f"ID vs OOD accuracy\nbig markers: mean over targets {se}; dots: single runs", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


# --------------------------------------------------------------------------- training curves
def _stage_spans(records: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    spans: list[tuple[str, int, int]] = []
    for r in records:
        st, step = str(r.get("stage", "")), int(r["step"])
        if spans and spans[-1][0] == st:
            spans[-1] = (st, spans[-1][1], step)
        else:
            spans.append((st, step, step))
    return spans


def training_curves(runs: Sequence[RunView], title: str = "") -> Figure | None:
    """Rows = algorithms; left: training loss, right: source-validation and target accuracy per step.

    Seeds are line styles; the selected checkpoint (best source validation) is a star;
    stages are shaded and named.
    """
    by_label: dict[str, list[RunView]] = defaultdict(list)
    for r in runs:
        if len(r.records) >= 2:
            by_label[r.label].append(r)
    if not by_label:
        return None
    labels = protocol_order(by_label)
    fig = _new(10.0, 0.6 + 2.1 * len(labels))
    axes = fig.subplots(len(labels), 2, squeeze=False)
    for row, lab in enumerate(labels):
        ax_l, ax_a = axes[row]
        for k, r in enumerate(sorted(by_label[lab], key=lambda v: v.seed)):
            ls = SEED_STYLES[k % len(SEED_STYLES)]
            recs = sorted(r.records, key=lambda q: q["step"])
            steps = np.array([q["step"] for q in recs])
            loss = np.array([np.nan if q.get("loss") is None else float(q["loss"]) for q in recs])
            val = np.array([float(q.get("val_acc", np.nan)) for q in recs]) * 100
            tgt = np.array([float(q.get(f"env{r.target}_in_acc", np.nan)) for q in recs]) * 100
            ax_l.plot(steps, loss, ls, color=LOSS_GREY, lw=1.2, label=f"seed {r.seed}")
            ax_a.plot(steps, val, ls, color=ACC_BLUE, lw=1.2, label="source validation" if k == 0 else None)
            ax_a.plot(steps, tgt, ls, color=ACC_ORANGE, lw=1.2, label="target (OOD)" if k == 0 else None)
            sel = (r.summary.get("selected") or {}).get("step")
            if sel is not None:
                at = [q for q in recs if q["step"] == sel]
                if at:
                    q = at[0]
                    ax_a.axvline(sel, color="#2ca02c", lw=0.8, alpha=0.6)
                    ax_a.plot([sel], [100 * float(q.get("val_acc", np.nan))], "*", color=ACC_BLUE, ms=12, mec="black",
                              mew=0.5, label="selected checkpoint" if k == 0 else None, zorder=4)
                    ax_a.plot([sel], [100 * float(q.get(f"env{r.target}_in_acc", np.nan))], "*", color=ACC_ORANGE,
                              ms=12, mec="black", mew=0.5, zorder=4)
                    if q.get("loss") is not None:
                        ax_l.plot([sel], [float(q["loss"])], "*", color="#2ca02c", ms=10, mec="black", mew=0.5, zorder=4)
            if k == 0:
                for j, (st, a, b) in enumerate(_stage_spans(recs)):
                    for ax in (ax_l, ax_a):
                        if j % 2 == 1:
                            ax.axvspan(a, b, color="#000", alpha=0.05, lw=0)
                        if j > 0:
                            ax.axvline(a, color="#999", lw=0.8, ls=":")
                    ax_a.text((a + b) / 2, 101, st, ha="center", va="bottom", fontsize=7, color="#555")
        ax_l.set_ylabel(lab, fontsize=9, fontweight="bold")
        ax_l.set_title("training loss", fontsize=8, loc="left")
        ax_a.set_title("accuracy (%)", fontsize=8, loc="left")
        ax_a.set_ylim(0, 108)
        for ax in (ax_l, ax_a):
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
        if row == len(labels) - 1:
            ax_l.set_xlabel("step", fontsize=8)
            ax_a.set_xlabel("step", fontsize=8)
        if row == 0:
            ax_a.legend(fontsize=7, loc="lower right")
            if len(by_label[lab]) > 1:
                ax_l.legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- lambda sweep
def lambda_sweep(runs: Sequence[RunView]) -> Figure | None:
    """ADiP's OOD and ID accuracy vs lambda (image-term weight), when runs with several lambdas exist."""
    adip = [r for r in runs if r.lam is not None and r.ood is not None]
    lams = sorted({r.lam for r in adip})
    if len(lams) < 2:
        return None
    fig = _new(6.4, 3.9)
    ax = fig.add_subplot()
    targets = sorted({r.target for r in adip})
    for key, color, name in (("ood", ACC_ORANGE, "OOD (target)"), ("id", ACC_BLUE, "ID (source held-out)")):
        means, ses, ns = [], [], []
        for lam in lams:
            cell: dict[int, list[float]] = defaultdict(list)  # seed -> values over targets
            for r in adip:
                if r.lam == lam:
                    v = getattr(r, key)
                    if v is not None:
                        cell[r.seed].append(v)
            per_seed = [float(np.mean(v)) for v in cell.values()]
            m, se = mean_se(per_seed)
            means.append(_pct(m)), ses.append(_pct(se)), ns.append(len(per_seed))
        ax.errorbar(lams, means, yerr=_yerr(ses, ns), fmt="o-", color=color, capsize=3, lw=1.6, label=f"{name}, mean over targets")
        if key == "ood" and len(targets) > 1:
            for t in targets:
                ys = []
                for lam in lams:
                    vals = [r.ood for r in adip if r.lam == lam and r.target == t]
                    ys.append(_pct(float(np.mean(vals))) if vals else np.nan)
                ax.plot(lams, ys, "-", color=color, alpha=0.3, lw=0.9)
                dom = next(r.target_name for r in adip if r.target == t)
                ax.text(lams[-1], ys[-1], f" {dom}", fontsize=6.5, color=color, alpha=0.8, va="center")
    ax.set_xlabel("λ (weight of the image-embedding term; 1 − λ weights the text term)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("ADiP λ sweep (faint lines: single target domains)", fontsize=10)
    ax.set_xticks(lams)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------- confusion matrices
def confusion_counts(preds: Sequence[dict[str, Any]], n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    for p in preds:
        cm[int(p["label"]), int(p["pred"])] += 1
    return cm


def confusion_matrices(runs: Sequence[RunView], title: str = "") -> Figure | None:
    """One panel per algorithm (seeds summed): rows = true class, columns = predicted, row-normalised."""
    by_label: dict[str, list[dict[str, Any]]] = defaultdict(list)
    classes: list[str] | None = None
    for r in runs:
        p = r.predictions
        if p and p.get("items"):
            by_label[r.label].extend(p["items"])
            classes = classes or list(p.get("classes") or [])
    if not by_label or not classes:
        return None
    n = len(classes)
    labels = protocol_order(by_label)
    ncol = min(3, len(labels))
    nrow = math.ceil(len(labels) / ncol)
    side = 1.2 + 0.33 * n
    fig = _new(side * ncol + 0.6, side * nrow + 0.5)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    im = None
    for i, ax in enumerate(axes.flat):
        if i >= len(labels):
            ax.set_axis_off()
            continue
        lab = labels[i]
        cm = confusion_counts(by_label[lab], n)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(norm * 100, cmap="Blues", vmin=0, vmax=100)
        acc = np.trace(cm) / max(cm.sum(), 1)
        ax.set_title(f"{lab}: {100 * acc:.1f}% ({cm.sum()} images)", fontsize=8)
        ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=6.5)
        ax.set_yticks(range(n), classes, fontsize=6.5)
        if n <= 15:
            for a in range(n):
                for b in range(n):
                    if cm[a, b]:
                        ax.text(b, a, f"{100 * norm[a, b]:.0f}", ha="center", va="center", fontsize=5.5,
                                color="white" if norm[a, b] > 0.55 else "#222")
        if i % ncol == 0:
            ax.set_ylabel("true class", fontsize=7)
        ax.set_xlabel("predicted class", fontsize=7)
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="% of the true class")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------- confident mistakes
def mistake_score(item: dict[str, Any]) -> float:
    """How confidently wrong a prediction is: its ``margin`` (logit of the predicted class minus logit of the true
    class, = log p(pred) - log p(true): it does not saturate) where predictions.json has it, else its softmax
    confidence ``conf`` (older runs; saturates at 1.0 for sharp models)."""
    return float(item["margin"]) if "margin" in item else float(item.get("conf", 0.0))


def mistakes_ranked_by_margin(runs: Sequence[RunView]) -> bool:
    """Whether every wrong prediction of ``runs`` carries a ``margin`` (else they are ranked by confidence)."""
    items = [it for r in runs if r.predictions for it in r.predictions.get("items", [])
             if int(it["pred"]) != int(it["label"])]
    return bool(items) and all("margin" in it for it in items)


def confident_mistakes(runs: Sequence[RunView], n: int = 16, cols: int = 8, thumb: int = 112, title: str = "") -> Figure | None:
    """The ``n`` most confidently wrong predictions (over the given runs), as thumbnails: ranked by the logit margin
    of the predicted over the true class where every run stored it, else by softmax confidence."""
    from PIL import Image

    by_margin = mistakes_ranked_by_margin(runs)
    score = mistake_score if by_margin else (lambda it: float(it.get("conf", 0.0)))
    best: dict[str, tuple[float, dict[str, Any], list[str], Path, int]] = {}
    for r in runs:
        p = r.predictions
        if not p:
            continue
        root = Path(p.get("root", ""))
        for it in p.get("items", []):
            if int(it["pred"]) != int(it["label"]):
                c = score(it)
                if it["path"] not in best or c > best[it["path"]][0]:
                    best[it["path"]] = (c, it, list(p.get("classes") or []), root, r.seed)
    if not best:
        return None
    top = sorted(best.values(), key=lambda v: -v[0])[:n]
    cols = min(cols, len(top))
    rows = math.ceil(len(top) / cols)
    fig = _new(1.45 * cols, 1.75 * rows + (0.35 if title else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (sc, it, classes, root, seed) in zip(axes.flat, top):
        try:
            with Image.open(root / it["path"]) as im:
                img = im.convert("RGB")
                img.thumbnail((thumb, thumb))
                ax.imshow(np.asarray(img))
        except OSError:
            ax.imshow(np.full((thumb, thumb, 3), 220, dtype=np.uint8))
            ax.text(thumb / 2, thumb / 2, "image\nmissing", ha="center", va="center", fontsize=7, color="#666")
        name = lambda i: classes[i] if 0 <= i < len(classes) else str(i)  # noqa: E731
        how = f"margin {sc:.1f}" if by_margin else f"{sc:.2f}"
        ax.set_title(f"true: {name(int(it['label']))}\npred: {name(int(it['pred']))} ({how})", fontsize=6.5,
                     color="#b00", pad=2)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------- teacher-query bill
def run_bills(runs: Sequence[RunView]) -> list[TeacherBill]:
    """:func:`~vl2v.evaluation.tables.teacher_bills` of the runs (per row label, protocol order)."""
    return teacher_bills(dict(r.summary, label=r.label) for r in runs)


def query_bill(runs: Sequence[RunView]) -> Figure | None:
    """Teacher image queries per training image for each algorithm: what its runs needed, split into what this
    process paid (sent to the teacher) and what was already in the store; older runs from the store's counters."""
    bills = run_bills(runs)
    if not any(b.any for b in bills):
        return None
    fig = _new(7.4, 1.3 + 0.42 * len(bills))
    ax = fig.add_subplot()
    y = np.arange(len(bills))[::-1]
    per = lambda b, c: c["image"] / max(b.train_images, 1)  # noqa: E731
    paid = np.array([per(b, b.paid) for b in bills])
    hits = np.array([per(b, b.store_hits) for b in bills])
    old = np.array([b.legacy for b in bills])
    for mask, hatch, suffix in ((~old, None, ""), (old, "//", f" ({OLD_BILL})")):
        if mask.any():
            ax.barh(y[mask], paid[mask], color="#c44e52", hatch=hatch, edgecolor="white", linewidth=0.5,
                    label="paid: sent to the teacher by this process" + suffix)
            ax.barh(y[mask], hits[mask], left=paid[mask], color="#c44e52", alpha=0.3, hatch=hatch, edgecolor="white",
                    linewidth=0.5, label="store hits: already in the embedding store" + suffix)
    for yi, b, s, h in zip(y, bills, paid, hits):
        need = "" if b.legacy else f"{b.needed['image']:,} needed: "
        ax.text(s + h, yi, f"  {need}{b.paid['image']:,} paid, {b.store_hits['image']:,} in store "
                f"({b.runs} run{'s' if b.runs != 1 else ''})", va="center", fontsize=7)
    ax.set_yticks(y, [b.row for b in bills], fontsize=8)
    ax.set_xlabel("teacher image queries per training image (summed over runs); bar: paid + store hits = needed")
    ax.set_xlim(0, max(1.0, float((paid + hits).max())) * 1.7)
    ax.set_title("Teacher-query bill: needed = what a run would pay alone; paid = what this process sent", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.legend(fontsize=7, ncol=2, loc="outside lower center", frameon=False)
    return fig
