"""The teacher-quality curve: does a student inherit a teacher's robustness out of domain?

For a graded family of teachers (the DIAGNOSTIC privileged teacher at several ``alpha``, and its base teacher
as ``alpha = 0``), each point is one (teacher, target domain, trial seed): x = the teacher's own zero-shot
accuracy on the target's test split, y = what a student trained with that teacher gains over a student trained
without it, on the same data stream, budget and selection rule:

* ``ADiP - ERM-FT``: the whole method against fine-tuning on labels;
* ``KD - ERM-FT``: logit distillation against labels;
* ``ADiP - ADiP(lam=0)``: what the teacher's *image* term adds to a student that already points at the
  teacher's class-text prototypes (lam = 0 uses the texts only, the same for every teacher of the family).

ERM-FT and ADiP(lam=0) do not depend on the teacher's image embeddings, so they are read from ``baseline``
runs (same data, seed, budget) once. ``vl2v curve RUNS --baseline BASE`` prints the table and writes the
figure.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vl2v.evaluation.tables import mean_se
from vl2v.runs.summary import RunEntry, collect_runs

_PRIV = re.compile(r"^DIAGNOSTIC-privileged\(alpha=([0-9.eE+-]+);target=([^;]+);trial_seed=(\d+);")

#: the differences the curve draws: name -> (student label, reference label)
DIFFS = {"ADiP - ERM-FT": ("adip", "erm_ft"), "KD - ERM-FT": ("kd", "erm_ft"),
         "ADiP - ADiP(lam=0)": ("adip", "adip (lam=0)"), "SD - ERM-FT": ("sd", "erm_ft")}


@dataclass
class CurvePoint:
    """One teacher on one target and trial seed: its zero-shot and the students' accuracies (OOD, 0..1)."""

    alpha: float
    target: str
    seed: int
    teacher_zeroshot: float | None = None
    acc: dict[str, float] = field(default_factory=dict)  # student label -> OOD accuracy
    ref: dict[str, float] = field(default_factory=dict)  # baseline label -> OOD accuracy
    # student label -> mean cos(z, I_t) on the target's test images (final.json's teacher_cos), where measured
    cos: dict[str, float] = field(default_factory=dict)

    def diff(self, name: str) -> float | None:
        student, reference = DIFFS[name]
        a = self.acc.get(student)
        b = self.ref.get(reference, self.acc.get(reference))
        return None if a is None or b is None else a - b


def _ood(e: RunEntry) -> float | None:
    v = (e.summary.get("selected") or {}).get("ood_acc")
    return None if v is None or not math.isfinite(v) else float(v)


def _target_name(e: RunEntry) -> str:
    doms = e.domains
    t = int(e.summary["target"])
    return doms[t] if t < len(doms) else str(t)


def _cos(p: CurvePoint, e: RunEntry) -> None:
    c = (e.summary.get("teacher_cos") or {}).get("mean")
    if c is not None:
        p.cos[e.label] = float(c)


#: the students whose final cos(z, I_t) the curve's table shows (those that embed into the teacher's space)
COS_STUDENTS = {"adip": "ADiP cos(z, I_t)", "sd": "SD cos(z, I_t)"}


def collect_curve(paths: Sequence[str | Path], baseline: Sequence[str | Path]) -> list[CurvePoint]:
    """The curve's points: runs with a privileged teacher under ``paths`` (alpha from the teacher's identity),
    and the ``baseline`` runs (its base teacher: alpha = 0 for its zeroshot/adip/kd/sd runs, and the
    teacher-free references ERM-FT and ADiP(lam=0) for every alpha)."""
    return curve_points(collect_runs(list(paths)), collect_runs(list(baseline)))


def curve_points(entries: Sequence[Any], baseline: Sequence[Any]) -> list[CurvePoint]:
    """:func:`collect_curve` on runs already read (:func:`vl2v.runs.summary.collect_runs`'s entries)."""
    points: dict[tuple[float, str, int], CurvePoint] = {}
    refs: dict[tuple[str, int], dict[str, float]] = defaultdict(dict)

    def point(alpha: float, target: str, seed: int) -> CurvePoint:
        return points.setdefault((alpha, target, seed), CurvePoint(alpha, target, seed))

    for e in baseline:
        acc, target, seed = _ood(e), _target_name(e), int(e.summary["trial_seed"])
        if acc is None or e.incomplete:
            continue
        lab = e.label
        if lab in ("erm_ft", "adip (lam=0)"):
            refs[(target, seed)][lab] = acc
        elif lab == "zeroshot":
            point(0.0, target, seed).teacher_zeroshot = acc
        elif lab in ("adip", "kd", "sd"):
            point(0.0, target, seed).acc[lab] = acc
            _cos(point(0.0, target, seed), e)
    for e in entries:
        m = _PRIV.match(str(e.args.get("teacher_identity") or ""))
        acc = _ood(e)
        if m is None or acc is None or e.incomplete:
            continue
        p = point(float(m.group(1)), m.group(2), int(m.group(3)))
        if e.label == "zeroshot":
            p.teacher_zeroshot = acc
        else:
            p.acc[e.label] = acc
            _cos(p, e)
    for p in points.values():
        p.ref = dict(refs.get((p.target, p.seed), {}))
    return sorted(points.values(), key=lambda p: (p.alpha, p.target, p.seed))


def _cell(xs: list[float], scale: float = 100.0, spec: str = "+.1f") -> str:
    """Mean ± SE of ``xs`` (times ``scale``; the SE only with more than one value), "-" without values."""
    if not xs:
        return "-"
    m, se = mean_se(xs)
    return f"{scale * m:{spec}}" + (f" ± {scale * se:{spec.lstrip('+')}}" if len(xs) > 1 else "")


def curve_table(points: Sequence[CurvePoint]) -> str:
    """Markdown: per alpha, the teacher's zero-shot and each difference, averaged over targets (per seed) and
    then mean ± SE over seeds; a second table per target."""
    alphas = sorted({p.alpha for p in points})
    names = [n for n in DIFFS if any(p.diff(n) is not None for p in points)]
    coss = [k for k in COS_STUDENTS if any(k in p.cos for p in points)]
    heads = names + [COS_STUDENTS[k] for k in coss]
    lines = ["| teacher (alpha) | targets × seeds | teacher zero-shot OOD | " + " | ".join(heads) + " |",
             "|---|---:|---:|" + "---:|" * len(heads)]
    for a in alphas:
        ps = [p for p in points if p.alpha == a]
        seeds = sorted({p.seed for p in ps})

        def seed_means(get) -> list[float]:
            out = []
            for s in seeds:
                vals = [get(p) for p in ps if p.seed == s]
                if vals and all(v is not None for v in vals):
                    out.append(float(np.mean(vals)))
            return out

        zs = seed_means(lambda p: p.teacher_zeroshot)
        z = _cell(zs, spec=".1f")
        cells = [_cell(seed_means(lambda p, n=n: p.diff(n))) for n in names]
        cells += [_cell(seed_means(lambda p, k=k: p.cos.get(k)), 1.0, ".3f") for k in coss]
        who = "the base teacher" if a == 0 else "privileged, DIAGNOSTIC"
        lines.append(f"| {a:g} ({who}) | {len({p.target for p in ps})} × {len(seeds)} | {z} | " + " | ".join(cells) + " |")
    lines += ["", "| teacher (alpha) | target | seeds | teacher zero-shot OOD | " + " | ".join(heads) + " |",
              "|---|---|---:|---:|" + "---:|" * len(heads)]
    for a in alphas:
        for t in sorted({p.target for p in points if p.alpha == a}):
            ps = [p for p in points if p.alpha == a and p.target == t]
            zs = [p.teacher_zeroshot for p in ps if p.teacher_zeroshot is not None]
            z = f"{100 * float(np.mean(zs)):.1f}" if zs else "-"
            cells = [_cell([d for p in ps if (d := p.diff(n)) is not None]) for n in names]
            cells += [_cell([p.cos[k] for p in ps if k in p.cos], 1.0, ".3f") for k in coss]
            lines.append(f"| {a:g} | {t} | {len(ps)} | {z} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_figure(points: Sequence[CurvePoint]):
    """x = the teacher's zero-shot OOD accuracy (%), y = the student's gain (points), one marker per
    (teacher, target, seed) and a colour per difference; None without points."""
    from matplotlib.figure import Figure

    names = [n for n in DIFFS if any(p.diff(n) is not None and p.teacher_zeroshot is not None for p in points)]
    if not names:
        return None
    fig = Figure(figsize=(7.5, 4.6), dpi=110)
    ax = fig.add_subplot(111)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for n, c in zip(names, colors):
        ps = [p for p in points if p.diff(n) is not None and p.teacher_zeroshot is not None]
        x = np.array([100 * p.teacher_zeroshot for p in ps])
        y = np.array([100 * p.diff(n) for p in ps])
        ax.scatter(x, y, s=22, color=c, alpha=0.75, label=n)
        if len(ps) >= 3 and np.ptp(x) > 0:
            k, b = np.polyfit(x, y, 1)
            xs = np.linspace(x.min(), x.max(), 20)
            ax.plot(xs, k * xs + b, color=c, lw=1.2)
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("teacher's zero-shot accuracy on the target domain (%)")
    ax.set_ylabel("student gain (accuracy points)")
    ax.set_title("Teacher-quality curve (privileged teachers are DIAGNOSTIC: they saw the target's validation split)",
                 fontsize=8)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def curve_data(points: Sequence[CurvePoint]) -> list[dict[str, Any]]:
    """The points as JSON-ready records (accuracies in %)."""
    pct = lambda v: None if v is None else round(100 * v, 2)  # noqa: E731
    return [{"alpha": p.alpha, "target": p.target, "seed": p.seed, "teacher_zeroshot": pct(p.teacher_zeroshot),
             "students": {k: pct(v) for k, v in p.acc.items()}, "references": {k: pct(v) for k, v in p.ref.items()},
             "diffs": {n: pct(p.diff(n)) for n in DIFFS},
             "teacher_cos": {k: round(v, 4) for k, v in p.cos.items()}} for p in points]
