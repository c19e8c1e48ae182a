"""Result tables in DomainBed's layout: algorithms x target domains (+ Avg), mean +- SE over trials.

Standard error is computed as DomainBed's ``collect_results`` does: the
population standard deviation (``np.std``, ddof=0) over trial seeds divided by
sqrt(n). (It is sqrt((n-1)/n) times the sample-based SE: 0.82x for 3 trials.)
"Avg" is, per trial, the mean over target domains, then mean +- SE over trials
(only when every target has the trial).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np


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
        return list(self.acc.keys())

    def avg_values(self, row: str) -> list[float]:
        cells = self.acc[row]
        targets = list(range(len(self.domains)))
        if any(t not in cells for t in targets):
            return []
        seeds = set.intersection(*(set(cells[t]) for t in targets))
        return [float(np.mean([cells[t][s] for t in targets])) for s in sorted(seeds)]

    def cell(self, row: str, t: int) -> list[float]:
        return [v for _, v in sorted(self.acc[row].get(t, {}).items())]

    def markdown(self, title: str = "") -> str:
        head = ["Algorithm"] + self.domains + ["Avg"]
        lines = [f"**{title}**", ""] if title else []
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for r in self.rows():
            cells = [fmt(self.cell(r, t)) for t in range(len(self.domains))]
            lines.append("| " + " | ".join([r + self.marks.get(r, "")] + cells + [fmt(self.avg_values(r))]) + " |")
        return "\n".join(lines)

    def latex(self, caption: str = "") -> str:
        cols = "l" + "c" * (len(self.domains) + 1)
        esc = lambda s: s.replace("_", r"\_")  # noqa: E731
        out = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{cols}}}", r"\toprule",
               " & ".join(["Algorithm"] + [esc(d) for d in self.domains] + ["Avg"]) + r" \\", r"\midrule"]
        for r in self.rows():
            cells = [fmt(self.cell(r, t), latex=True) for t in range(len(self.domains))]
            out.append(" & ".join([esc(r + self.marks.get(r, ""))] + cells + [fmt(self.avg_values(r), latex=True)]) + r" \\")
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
        algo, t, s = f["algorithm"], int(f["target"]), int(f["trial_seed"])
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
    for label, row in cells.items():
        lines.append("| " + " | ".join([label] + [", ".join(row.get(t, [])) or "-" for t in range(len(domains))]) + " |")
    return "\n".join(lines)
