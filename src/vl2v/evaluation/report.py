"""``vl2v report``: aggregate run directories into DomainBed-style tables.

Finished runs are summarised from their ``final.json``; unfinished runs
(no ``done`` marker) from their records so far, marked as incomplete. Where runs
of one algorithm ran with several hparams seeds (random hyperparameter search),
the tables show, per target and trial seed, the draw with the best training-domain
validation accuracy, and a table lists the chosen hyperparameters. Algorithms are in the protocol's order
(:func:`~vl2v.evaluation.tables.protocol_order`); the teacher bill says, per algorithm, what its runs needed
from the teacher and what this process paid. :func:`report_data` is the same as data (``--json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vl2v.evaluation.tables import (
    BILL_NOTE,
    NOVEL_TITLES,
    OLD_BILL_NOTE,
    build_novel_tables,
    build_tables,
    novel_markdown,
    novel_preamble,
    protocol_order,
    selected_stages,
    table_sections,
    teacher_bills,
)
from vl2v.runs.summary import DatasetGroup, HParamPick, collect_runs, group_by_dataset

OOD_TITLE = "Out-of-domain accuracy (%): training-domain validation, mean ± SE over trials"
ID_TITLE = "In-domain accuracy (%): source domains' held-out splits"
ORACLE_TITLE = ("Out-of-domain accuracy (%): test-domain validation (oracle, DomainBed's: each run's last checkpoint), "
                "mean ± SE over trials")

ORACLE_TITLES = {"oracle_ood": ORACLE_TITLE,
                 "oracle_id": "In-domain accuracy (%): test-domain validation (oracle), mean ± SE over trials"}


def _groups(paths: list[str | Path]) -> dict[str, DatasetGroup]:
    groups = group_by_dataset(collect_runs(paths))
    if not groups:
        raise FileNotFoundError(f"no run directories (with results.jsonl) under {', '.join(map(str, paths))}")
    return groups


def build_report(paths: list[str | Path], latex: bool = False) -> str:
    out: list[str] = []
    for dataset, g in _groups(paths).items():
        finals = g.finals
        picks = g.picks
        tables = build_tables(finals, g.domain_names())
        seeds = sorted({int(f["trial_seed"]) for f in finals})
        out.append(f"## {dataset}: {len(g.entries)} runs, trial seeds {seeds}"
                   + (f" ({g.incomplete} unfinished, summarised from their records so far)" if g.incomplete else "")
                   + (f"; {len(finals)} after choosing among hyperparameter draws" if picks else ""))
        out.append("")
        for table, title in table_sections(tables, OOD_TITLE, ID_TITLE):
            out.append(table.markdown(title))
            out.append("")
        if "oracle_ood" in tables:
            out.append(tables["oracle_ood"].markdown(ORACLE_TITLE))
            out.append("")
        novel = novel_markdown(finals, g.domain_names())
        if novel:
            out += [novel, ""]
        stages = selected_stages(finals, g.domain_names())
        if stages:
            out += ["**Checkpoint chosen by training-domain validation (stage@step, one per trial)**", "", stages, ""]
        if picks:
            out.append(hparams_table(picks, g.domain_names()))
            out.append("")
        q = bill_table(finals)
        if q:
            out.append(q)
            out.append("")
        if latex:
            out.append("```latex")
            for table, title in table_sections(tables, f"{dataset}: out-of-domain accuracy", f"{dataset}: in-domain accuracy"):
                out.append(table.latex(title))
            out.append("```")
            out.append("")
    return "\n".join(out).rstrip()


def report_data(paths: list[str | Path]) -> dict[str, Any]:
    """What :func:`build_report` prints, as data (``vl2v report --json``): per dataset its tables (per algorithm
    and target domain: mean, SE and number of trials, in %), the chosen hyperparameters and the teacher bills."""
    datasets = []
    for dataset, g in _groups(paths).items():
        finals = g.finals
        tables = build_tables(finals, g.domain_names())
        titles = {id(t): title for t, title in table_sections(tables, OOD_TITLE, ID_TITLE)}
        datasets.append({
            "dataset": dataset, "domains": g.domain_names(), "runs": len(g.entries), "unfinished": g.incomplete,
            "trial_seeds": sorted({int(f["trial_seed"]) for f in finals}),
            "tables": {name: {"title": titles.get(id(t), ORACLE_TITLES.get(name, name)), **t.as_dict()}
                       for name, t in tables.items()},
            **({"novel_classes": {"note": novel_preamble(finals),
                                  "tables": {name: {"title": NOVEL_TITLES[name], **t.as_dict()}
                                             for name, t in novel.items()}}}
               if (novel := build_novel_tables(finals, g.domain_names())) else {}),
            "hparams": [{"algorithm": p.label, "target": p.target, "trial_seed": p.trial_seed,
                         "hparams_seed": p.hparams_seed, "candidates": p.candidates, "val_acc": p.val_acc,
                         "values": p.values} for p in g.picks],
            "teacher_bills": [b.as_dict() for b in teacher_bills(finals)],
            "teacher_bill_note": BILL_NOTE})
    return {"datasets": datasets}


def bill_table(finals: list[dict[str, Any]]) -> str:
    """Markdown: the teacher bill per algorithm (summed over its runs); empty when no run asked the teacher."""
    bills = teacher_bills(finals)
    if not any(b.any for b in bills):
        return ""
    lines = ["**Teacher queries: the bill** (summed over runs; a query is one image or one class prompt sent to "
             "the teacher)", "", BILL_NOTE, "",
             "| Algorithm | runs | needed image queries / training image | needed image queries | needed text queries "
             "| paid image queries | paid text queries | store hits (image) | store hits (text) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for b in bills:
        per = b.per_image(b.needed)
        needed = ["-", "-", "-"] if b.legacy else [f"{per:.2f}" if per is not None else "-", str(b.needed["image"]),
                                                   str(b.needed["text"])]
        lines.append("| " + " | ".join([b.row, str(b.runs), *needed, str(b.paid["image"]), str(b.paid["text"]),
                                        str(b.store_hits["image"]), str(b.store_hits["text"])]) + " |")
    priced = [b for b in bills if b.cost is not None]
    if priced:
        lines += ["", "**The same bill in money** (at the price each run's teacher stated; see its `teacher_bill.price`)",
                  "", "| Algorithm | needed (alone) | paid (this process) |", "|---|---:|---:|"]
        lines += [f"| {b.row} | {b.currency} {b.cost['needed']:.2f} | {b.currency} {b.cost['paid']:.2f} |"
                  for b in priced]
    if any(b.legacy for b in bills):
        lines += ["", OLD_BILL_NOTE]
    return "\n".join(lines)


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def hparams_table(picks: list[HParamPick], domains: list[str]) -> str:
    """The hyperparameters chosen per (algorithm, target, trial seed) among random draws."""
    lines = ["**Chosen hyperparameters** (per algorithm, target and trial seed: the hparams seed whose selected "
             "checkpoint has the best training-domain validation accuracy; seed 0 = the defaults)", "",
             "| Algorithm | target | trial seed | hparams seed | of seeds | val. acc. | values |",
             "|---|---|---:|---:|---|---:|---|"]
    order = {lab: i for i, lab in enumerate(protocol_order(p.label for p in picks))}
    for p in sorted(picks, key=lambda p: order[p.label]):
        name = domains[p.target] if 0 <= p.target < len(domains) else str(p.target)
        values = ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(p.values.items())) or "defaults"
        lines.append(f"| {p.label} | {name} | {p.trial_seed} | {p.hparams_seed} | {' '.join(map(str, p.candidates))} | "
                     f"{100 * p.val_acc:.1f} | {values} |")
    return "\n".join(lines)
