"""Result tables in DomainBed's layout: algorithms x target domains (+ Avg), mean +- SE over trials.

Standard error is computed as DomainBed's ``collect_results`` does: the
population standard deviation (``np.std``, ddof=0) over trial seeds divided by
sqrt(n). (It is sqrt((n-1)/n) times the sample-based SE: 0.82x for 3 trials.)
"Avg" is, per trial, the mean over target domains, then mean +- SE over trials
(only when every target has the trial). Rows are in the protocol's order (:func:`protocol_order`).
:func:`teacher_bills` sums the runs' teacher bills per algorithm for the report's bill table.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from vl2v.config import DEFAULT_ALGORITHMS
from vl2v.runs.summary import trial_key

#: the order of algorithms in every table and figure: the protocol's, then VL2V-SD, then the rest as found
ALGORITHM_ORDER: tuple[str, ...] = (*DEFAULT_ALGORITHMS, "sd")


def base_algorithm(label: str) -> str:
    """The algorithm a row label names: ``adip`` for ``adip (lam=0.25)``, ``adip:lam=0.25``, ``adip [teacher lit]``
    or ``adip + SWAD``."""
    m = re.match(r"[^\s:(\[+]+", label.strip())
    return m.group(0) if m else label


def protocol_order(labels: Iterable[str]) -> list[str]:
    """``labels`` (duplicates dropped) with the algorithms of :data:`ALGORITHM_ORDER` first, in that order; the
    variants of one algorithm, and algorithms not listed there, keep the order in which they appear."""
    seen = list(dict.fromkeys(labels))
    rank = {a: i for i, a in enumerate(ALGORITHM_ORDER)}
    return sorted(seen, key=lambda lab: rank.get(base_algorithm(lab), len(rank)))


def mean_se(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    m = float(np.mean(xs))
    se = float(np.std(xs) / math.sqrt(len(xs))) if len(xs) > 1 else 0.0  # DomainBed: ddof=0
    return m, se


def fmt(xs: list[float], latex: bool = False) -> str:
    if not xs:
        return "-"
    m, se = mean_se(xs)
    pm = r" $\pm$ " if latex else " ± "
    return f"{100 * m:.1f}{pm}{100 * se:.1f}" if len(xs) > 1 else f"{100 * m:.1f}"


@dataclass
class ResultTable:
    """acc[row][target][seed] -> accuracy; rows are algorithm names (or "adip + SWAD")."""

    domains: list[str]
    acc: dict[str, dict[int, dict[int, float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(dict)))
    marks: dict[str, str] = field(default_factory=dict)  # row -> suffix shown after its name (e.g. " †")

    def add(self, row: str, target: int, seed: int, value: float) -> None:
        self.acc[row][target][seed] = value

    def rows(self) -> list[str]:
        return protocol_order(self.acc.keys())

    def avg_values(self, row: str) -> list[float]:
        cells = self.acc[row]
        targets = list(range(len(self.domains)))
        if any(t not in cells for t in targets):
            return []
        seeds = set.intersection(*(set(cells[t]) for t in targets))
        return [float(np.mean([cells[t][s] for t in targets])) for s in sorted(seeds)]

    def cell(self, row: str, t: int) -> list[float]:
        return [v for _, v in sorted(self.acc[row].get(t, {}).items())]

    def trials(self, row: str) -> int:
        """How many trials (trial seeds, or folds × seeds) the row's cells hold: its most on any target."""
        return max((len(c) for c in self.acc[row].values()), default=0)

    def label(self, row: str) -> str:
        """The row's name as the tables print it: with its mark, and with its trial count where the rows do not
        all hold the same number of trials (a mean over 3 trials beside one over 9 must say so)."""
        counts = {self.trials(r) for r in self.acc}
        n = f" (n={self.trials(row)})" if len(counts) > 1 else ""
        return row + self.marks.get(row, "") + n

    def markdown(self, title: str = "") -> str:
        head = ["Algorithm"] + self.domains + ["Avg"]
        lines = [f"**{title}**", ""] if title else []
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for r in self.rows():
            lines.append("| " + " | ".join([self.label(r)] + self.formatted(r)) + " |")
        return "\n".join(lines)

    def formatted(self, row: str, latex: bool = False) -> list[str]:
        """One row's cells as every rendering prints them: each target domain's, then the average."""
        return [fmt(self.cell(row, t), latex=latex) for t in range(len(self.domains))] + \
            [fmt(self.avg_values(row), latex=latex)]

    def as_dict(self) -> dict[str, Any]:
        """The table as data (accuracy in %): per row, per target domain (and ``Avg``) ``mean``, ``se`` and ``n``
        (the number of trials); a cell without runs is left out, ``se`` is null with one trial."""

        def cell(xs: list[float]) -> dict[str, Any]:
            m, se = mean_se(xs)
            finite = lambda v: round(100 * v, 4) if math.isfinite(v) else None  # noqa: E731
            return {"mean": finite(m), "se": finite(se) if len(xs) > 1 else None, "n": len(xs)}

        rows = []
        for r in self.rows():
            targets = {d: cell(self.cell(r, t)) for t, d in enumerate(self.domains) if self.cell(r, t)}
            avg = self.avg_values(r)
            rows.append({"algorithm": r, "note": self.marks.get(r, "").strip() or None, "targets": targets,
                         "avg": cell(avg) if avg else None})
        return {"domains": list(self.domains), "unit": "%", "rows": rows}

    def latex(self, caption: str = "") -> str:
        cols = "l" + "c" * (len(self.domains) + 1)
        esc = lambda s: s.replace("_", r"\_")  # noqa: E731
        out = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
               " & ".join(["Algorithm"] + [esc(d) for d in self.domains] + ["Avg"]) + r" \\", r"\midrule"]
        for r in self.rows():
            out.append(" & ".join([esc(self.label(r))] + self.formatted(r, latex=True)) + r" \\")
        out += [r"\bottomrule", r"\end{tabular}"]
        if caption:
            out.append(rf"\caption{{{esc(caption)}}}")
        out.append(r"\end{table}")
        return "\n".join(out)


#: marks a SWAD-table row where some run has no SWAD average and shows its selected checkpoint instead
NO_SWAD_MARK = " †"
NO_SWAD_NOTE = ("† some runs have no SWAD average (training-free, a frozen last stage, or no loss valley "
                "found): their selected checkpoint is shown")


def build_tables(finals: Iterable[dict[str, Any]], domains: list[str]) -> dict[str, ResultTable]:
    """Tables from runs' ``final.json`` summaries.

    ``ood``/``id``: the selected checkpoints (training-domain validation). When any run has a SWAD
    result, also ``swad_ood``/``swad_id`` (the headline, first in the dict, as the paper reports SWAD):
    each run's SWAD average, or its selected checkpoint where it has none (row marked
    :data:`NO_SWAD_MARK`). Without SWAD results the two tables are exactly those of earlier versions.
    ``oracle_ood``/``oracle_id`` (last): test-domain validation (DomainBed's oracle), where runs record it.
    """
    finals = list(finals)
    has_swad = any("ood_acc" in (f.get("swad") or {}) for f in finals)
    has_oracle = any("oracle" in f for f in finals)
    ood, idt = ResultTable(domains), ResultTable(domains)
    sw_ood, sw_id = ResultTable(domains), ResultTable(domains)
    o_ood, o_id = ResultTable(domains), ResultTable(domains)
    for f in finals:
        algo, t, s = f["algorithm"], int(f["target"]), trial_key(f)
        label = f.get("label", algo)
        if "selected" in f:
            ood.add(label, t, s, f["selected"]["ood_acc"])
            idt.add(label, t, s, f["selected"]["id_acc"])
        if "oracle" in f:
            o_ood.add(label, t, s, f["oracle"]["ood_acc"])
            o_id.add(label, t, s, f["oracle"]["id_acc"])
        if not has_swad:
            continue
        sw = f.get("swad") or {}
        src = sw if "ood_acc" in sw else f.get("selected")
        if src is None:
            continue
        if src is not sw:
            sw_ood.marks[label] = sw_id.marks[label] = NO_SWAD_MARK
        sw_ood.add(label, t, s, src["ood_acc"])
        sw_id.add(label, t, s, src["id_acc"])
    out = {"swad_ood": sw_ood, "swad_id": sw_id} if has_swad else {}
    out.update(ood=ood, id=idt)
    if has_oracle:
        out.update(oracle_ood=o_ood, oracle_id=o_id)
    return out


#: the novel-class benchmark's tables (``final.json`` → ``novel``) and their captions
NOVEL_TITLES = {
    "novel_novel": "Novel classes (%): the held-out classes' target images, named among the held-out classes only "
                   "(classes no student trained on)",
    "novel_hm": "Seen and novel together (%): harmonic mean of the seen and the novel classes' accuracy when every "
                "target image is named among every class (the generalised setting)",
    "novel_seen": "Seen classes (%): the trained classes' target images, named among the trained classes (the "
                  "protocol's out-of-domain accuracy)",
}
NOVEL_KEYS = {"novel_novel": "novel_acc", "novel_hm": "hm", "novel_seen": "seen_acc"}


def build_novel_tables(finals: Iterable[dict[str, Any]], domains: list[str]) -> dict[str, ResultTable]:
    """The novel-class benchmark's tables (mean ± SE over folds × trial seeds), from the runs that can name a
    class they never trained on (a text-space head: ADiP, SD, the teacher's zero-shot); ``{}`` without any."""
    tables = {name: ResultTable(domains) for name in NOVEL_TITLES}
    for f in finals:
        nv = f.get("novel") or {}
        if nv.get("novel_acc") is None:
            continue
        for name, key in NOVEL_KEYS.items():
            if nv.get(key) is not None:
                tables[name].add(f.get("label", f["algorithm"]), int(f["target"]), trial_key(f), nv[key])
    return tables if tables["novel_novel"].acc else {}


def novel_preamble(finals: Iterable[dict[str, Any]]) -> str:
    """Which classes each fold held out, and which rows cannot name new classes (Markdown; empty if no fold)."""
    folds: dict[int, list[str]] = {}
    fixed: set[str] = set()
    for f in finals:
        nv = f.get("novel") or {}
        if nv.get("fold") is not None and nv.get("held_out"):
            folds[int(nv["fold"])] = list(nv["held_out"])
        if nv.get("text_head") is False:
            fixed.add(f.get("label", f["algorithm"]))
    if not folds:
        return ""
    text = ("**Novel classes: classes held out of every training and validation split**, named at test time "
            "with the teacher's text embeddings (held out: " + "; ".join(
                f"fold {k}: {', '.join(v)}" for k, v in sorted(folds.items())) + "). Mean ± SE over folds × trial "
            "seeds; the teacher's zero-shot row scores the teacher on the same images.")
    if fixed:
        text += (f" Not scored on novel classes: {', '.join(protocol_order(fixed))} (a classifier over the "
                 "training classes cannot name a class it never saw).")
    return text


def novel_markdown(finals: Iterable[dict[str, Any]], domains: list[str]) -> str:
    """The novel-class benchmark's section (preamble and tables) as Markdown; empty for other experiments."""
    finals = list(finals)
    tables = build_novel_tables(finals, domains)
    if not tables:
        return ""
    parts = [novel_preamble(finals)]
    parts += [tables[name].markdown(title) for name, title in NOVEL_TITLES.items()]
    return "\n\n".join(parts)


def table_sections(tables: dict[str, ResultTable], ood_title: str, id_title: str) -> list[tuple[ResultTable, str]]:
    """(table, caption) in the order to print them: the SWAD tables first where there are any (the headline,
    captions saying SWAD), then the selected checkpoints'; without SWAD, just ``ood`` and ``id`` as titled."""
    if "swad_ood" not in tables:
        return [(tables["ood"], ood_title), (tables["id"], id_title)]
    note = any(tables["swad_ood"].marks.values())
    extra = f" {NO_SWAD_NOTE}" if note else ""
    return [(tables["swad_ood"], f"SWAD (headline): {ood_title}; SWAD weight average of the last stage.{extra}"),
            (tables["swad_id"], f"SWAD (headline): {id_title}; SWAD weight average of the last stage.{extra}"),
            (tables["ood"], f"Selected checkpoint: {ood_title}"),
            (tables["id"], f"Selected checkpoint: {id_title}")]


def selected_stages(finals: Iterable[dict[str, Any]], domains: list[str]) -> str:
    """Markdown: which stage and step training-domain validation selected, per algorithm and target
    (``distill@63``; with several trials, one entry per trial)."""
    cells: dict[str, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
    for f in sorted(finals, key=lambda f: int(f["trial_seed"])):
        sel = f.get("selected")
        if sel is None or sel.get("stage") in (None, "none"):
            continue
        cells[f.get("label", f["algorithm"])][int(f["target"])].append(f"{sel['stage']}@{sel['step']}")
    if not cells:
        return ""
    lines = ["| Algorithm | " + " | ".join(domains) + " |", "|" + "|".join(["---"] * (len(domains) + 1)) + "|"]
    for label in protocol_order(cells):
        row = cells[label]
        lines.append("| " + " | ".join([label] + [", ".join(row.get(t, [])) or "-" for t in range(len(domains))]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- teacher bills
BILL_NOTE = ("needed: what the run would pay alone (the distinct teacher answers it uses, with an empty store); "
             "paid: what this process sent to the teacher on the run's behalf; store hits = needed − paid "
             "(already in the store).")
OLD_BILL = "store counters, older run"
OLD_BILL_NOTE = (f"Rows marked ({OLD_BILL}): runs recorded before teacher bills; their numbers are the embedding "
                 "store's counters (sent to the teacher, found in the store), which miss what a run reused from "
                 "memory, so they have no 'needed'.")


@dataclass
class TeacherBill:
    """One algorithm's teacher queries summed over its runs, per kind (``image``, ``text``).

    From each run's ``final.json`` ``teacher_bill`` block; ``legacy``: from runs without one (older runs), whose
    ``queries`` block (the store's counters) gives ``paid`` (sent) and ``store_hits``, and ``needed`` is unknown.
    """

    label: str
    legacy: bool = False
    runs: int = 0
    train_images: int = 0
    needed: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    paid: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    store_hits: dict[str, int] = field(default_factory=lambda: {"image": 0, "text": 0})
    seconds: float = 0.0  # waiting for the teacher (the store's counter)
    cost: dict[str, float] | None = None  # money, where the teacher states a price: "needed", "paid"
    currency: str | None = None

    @property
    def row(self) -> str:
        return self.label + (f" ({OLD_BILL})" if self.legacy else "")

    @property
    def any(self) -> bool:
        return any(d[k] for d in (self.needed, self.paid, self.store_hits) for k in d)

    def per_image(self, counts: dict[str, int]) -> float | None:
        """``counts["image"]`` per training image (summed over runs); None without training images."""
        return counts["image"] / self.train_images if self.train_images else None

    def add(self, f: dict[str, Any]) -> None:
        self.runs += 1
        self.train_images += int(f.get("n_train_images") or 0)
        q = f.get("queries") or {}
        self.seconds += float(q.get("seconds", 0) or 0)
        b = f.get("teacher_bill")
        if b is not None and b.get("cost"):
            self.cost = {k: (self.cost or {}).get(k, 0.0) + float(b["cost"].get(k, 0.0)) for k in ("needed", "paid")}
            self.currency = (b.get("price") or {}).get("currency", "USD")
        for kind in ("image", "text"):
            if b is not None:
                for part in ("needed", "paid", "store_hits"):
                    getattr(self, part)[kind] += int((b.get(part) or {}).get(kind, 0))
            else:
                self.paid[kind] += int(q.get(f"{kind}_queries", 0))
                self.store_hits[kind] += int(q.get(f"{kind}_hits", 0))

    def as_dict(self) -> dict[str, Any]:
        return {"algorithm": self.label, "source": OLD_BILL if self.legacy else "teacher_bill", "runs": self.runs,
                "n_train_images": self.train_images, "needed": None if self.legacy else dict(self.needed),
                "needed_image_per_train_image": None if self.legacy else self.per_image(self.needed),
                "paid": dict(self.paid), "store_hits": dict(self.store_hits), "teacher_seconds": self.seconds,
                "cost": dict(self.cost) if self.cost is not None else None, "currency": self.currency}


def teacher_bills(finals: Iterable[dict[str, Any]]) -> list[TeacherBill]:
    """The runs' teacher bills summed per row label, in the protocol's order; runs without a ``teacher_bill``
    (older runs) in a separate ``legacy`` row after their algorithm's."""
    bills: dict[tuple[str, bool], TeacherBill] = {}
    for f in finals:
        label, legacy = str(f.get("label") or f["algorithm"]), "teacher_bill" not in f
        bills.setdefault((label, legacy), TeacherBill(label, legacy)).add(f)
    order = {lab: i for i, lab in enumerate(protocol_order(lab for lab, _ in bills))}
    return [bills[k] for k in sorted(bills, key=lambda k: (order[k[0]], k[1]))]
