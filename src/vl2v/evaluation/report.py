"""``vl2v report``: aggregate run directories into DomainBed-style tables.

Finished runs are summarised from their ``final.json``; unfinished runs
(no ``done`` marker) from their records so far, marked as incomplete. Where runs
of one algorithm ran with several hparams seeds (random hyperparameter search),
the tables show, per target and trial seed, the draw with the best training-domain
validation accuracy, and a table lists the chosen hyperparameters.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from vl2v.evaluation.tables import build_tables, selected_stages, table_sections
from vl2v.runs.summary import HParamPick, collect_runs, group_by_dataset


def build_report(paths: list[str | Path], latex: bool = False) -> str:
    groups = group_by_dataset(collect_runs(paths))
    if not groups:
        raise FileNotFoundError(f"no run directories (with results.jsonl) under {', '.join(map(str, paths))}")
    out: list[str] = []
    for dataset, g in groups.items():
        finals = g.finals
        picks = g.picks
        tables = build_tables(finals, g.domain_names())
        seeds = sorted({int(f["trial_seed"]) for f in finals})
        out.append(f"## {dataset}: {len(g.entries)} runs, trial seeds {seeds}"
                   + (f" ({g.incomplete} unfinished, summarised from their records so far)" if g.incomplete else "")
                   + (f"; {len(finals)} after choosing among hyperparameter draws" if picks else ""))
        out.append("")
        sections = table_sections(tables, "Out-of-domain accuracy (%): training-domain validation, mean ± SE over trials",
                                  "In-domain accuracy (%): source domains' held-out splits")
        for table, title in sections:
            out.append(table.markdown(title))
            out.append("")
        if "oracle_ood" in tables:
            out.append(tables["oracle_ood"].markdown("Out-of-domain accuracy (%): test-domain validation (oracle, "
                                                     "DomainBed's: each run's last checkpoint), mean ± SE over trials"))
            out.append("")
        stages = selected_stages(finals, g.domain_names())
        if stages:
            out += ["**Checkpoint chosen by training-domain validation (stage@step, one per trial)**", "", stages, ""]
        if picks:
            out.append(hparams_table(picks, g.domain_names()))
            out.append("")
        q = _query_table(finals)
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


def _query_table(finals: list[dict[str, Any]]) -> str:
    rows: dict[str, list[float]] = defaultdict(lambda: [0, 0, 0, 0])
    for f in finals:
        q = f.get("queries") or {}
        n = f.get("n_train_images") or 0
        r = rows[f.get("label", f["algorithm"])]
        r[0] += q.get("image_queries", 0)
        r[1] += q.get("image_hits", 0)
        r[2] += n
        r[3] += q.get("text_queries", 0)
    if not any(r[0] or r[1] for r in rows.values()):
        return ""
    lines = ["**Teacher queries** (summed over runs; a query is one image sent to the teacher)", "",
             "| Algorithm | image queries | served from store | queries / training image | text queries |",
             "|---|---:|---:|---:|---:|"]
    for label, (qi, hits, n, qt) in rows.items():
        lines.append(f"| {label} | {int(qi)} | {int(hits)} | {qi / n if n else 0:.2f} | {int(qt)} |")
    lines += ["", "Runs in one `vl2v train`/`compare` process share the embeddings already loaded in memory, "
              "so later runs there show neither queries nor store hits."]
    return "\n".join(lines)


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def hparams_table(picks: list[HParamPick], domains: list[str]) -> str:
    """The hyperparameters chosen per (algorithm, target, trial seed) among random draws."""
    lines = ["**Chosen hyperparameters** (per algorithm, target and trial seed: the hparams seed whose selected "
             "checkpoint has the best training-domain validation accuracy; seed 0 = the defaults)", "",
             "| Algorithm | target | trial seed | hparams seed | of seeds | val. acc. | values |",
             "|---|---|---:|---:|---|---:|---|"]
    for p in picks:
        name = domains[p.target] if 0 <= p.target < len(domains) else str(p.target)
        values = ", ".join(f"{k}={_fmt_value(v)}" for k, v in sorted(p.values.items())) or "defaults"
        lines.append(f"| {p.label} | {name} | {p.trial_seed} | {p.hparams_seed} | {' '.join(map(str, p.candidates))} | "
                     f"{100 * p.val_acc:.1f} | {values} |")
    return "\n".join(lines)
