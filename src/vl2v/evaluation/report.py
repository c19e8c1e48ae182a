"""``vl2v report``: aggregate run directories into DomainBed-style tables.

Finished runs are summarised from their ``final.json``; unfinished runs
(no ``done`` marker) from their records so far, marked as incomplete.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from vl2v.evaluation.tables import build_tables, table_sections
from vl2v.runs.summary import collect_runs, group_by_dataset


def build_report(paths: list[str | Path], latex: bool = False) -> str:
    groups = group_by_dataset(collect_runs(paths))
    if not groups:
        raise FileNotFoundError(f"no run directories (with results.jsonl) under {', '.join(map(str, paths))}")
    out: list[str] = []
    for dataset, g in groups.items():
        finals = g.finals
        tables = build_tables(finals, g.domain_names())
        seeds = sorted({int(f["trial_seed"]) for f in finals})
        out.append(f"## {dataset}: {len(finals)} runs, trial seeds {seeds}"
                   + (f" ({g.incomplete} unfinished, summarised from their records so far)" if g.incomplete else ""))
        out.append("")
        sections = table_sections(tables, "Out-of-domain accuracy (%): training-domain validation, mean ± SE over trials",
                                  "In-domain accuracy (%): source domains' held-out splits")
        for table, title in sections:
            out.append(table.markdown(title))
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
