"""``vl2v report``: aggregate run directories into DomainBed-style tables.

Finished runs are summarised from their ``final.json``; unfinished runs
(no ``done`` marker) from their records so far, marked as incomplete.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from vl2v.evaluation.records import find_runs, load_run
from vl2v.evaluation.selection import select_record, summarize
from vl2v.evaluation.tables import build_tables


def run_summary(run_dir: Path) -> dict[str, Any] | None:
    """``final.json`` of a run, or the same summary computed from its records."""
    info = load_run(run_dir)
    if "final" in info:
        f = dict(info["final"])
        f["_domains"] = info.get("config", {}).get("domains")
        f["_dataset"] = info["records"][0]["args"]["dataset"] if info["records"] else None
        f.setdefault("label", _label(info))
        return f
    recs = info["records"]
    if not recs:
        return None
    rec = select_record(recs)
    args = rec["args"]
    return {"algorithm": args["algorithm"], "label": _label(info), "target": args["test_envs"][0],
            "trial_seed": args["trial_seed"], "selected": summarize(rec), "incomplete": True,
            "run_dir": str(run_dir), "_domains": info.get("config", {}).get("domains"), "_dataset": args["dataset"]}


def _label(info: dict[str, Any]) -> str:
    cfg = info.get("config", {})
    hp = cfg.get("spec", {}).get("hparams") or []
    name = cfg.get("args", {}).get("algorithm") or (info["records"][0]["args"]["algorithm"] if info["records"] else "?")
    return name + (" (" + ", ".join(f"{k}={v}" for k, v in hp) + ")" if hp else "")


def collect(paths: list[str | Path]) -> dict[str, dict[str, Any]]:
    """Group run summaries by dataset: {dataset: {"domains": [...], "finals": [...]}}."""
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"domains": None, "finals": [], "incomplete": 0})
    for run_dir in find_runs(list(paths)):
        f = run_summary(run_dir)
        if f is None:
            continue
        g = groups[f.get("_dataset") or "?"]
        if f.get("_domains"):
            g["domains"] = f["_domains"]
        g["finals"].append(f)
        g["incomplete"] += int(bool(f.get("incomplete")))
    return dict(groups)


def build_report(paths: list[str | Path], latex: bool = False) -> str:
    groups = collect(paths)
    if not groups:
        raise FileNotFoundError(f"no run directories (with results.jsonl) under {', '.join(map(str, paths))}")
    out: list[str] = []
    for dataset, g in groups.items():
        domains = g["domains"] or [str(i) for i in range(1 + max(int(f["target"]) for f in g["finals"]))]
        tables = build_tables(g["finals"], domains)
        seeds = sorted({int(f["trial_seed"]) for f in g["finals"]})
        out.append(f"## {dataset}: {len(g['finals'])} runs, trial seeds {seeds}"
                   + (f" ({g['incomplete']} unfinished, summarised from their records so far)" if g["incomplete"] else ""))
        out.append("")
        out.append(tables["ood"].markdown("Out-of-domain accuracy (%): training-domain validation, mean ± SE over trials"))
        out.append("")
        out.append(tables["id"].markdown("In-domain accuracy (%): source domains' held-out splits"))
        out.append("")
        q = _query_table(g["finals"])
        if q:
            out.append(q)
            out.append("")
        if latex:
            out.append("```latex")
            out.append(tables["ood"].latex(f"{dataset}: out-of-domain accuracy"))
            out.append(tables["id"].latex(f"{dataset}: in-domain accuracy"))
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
