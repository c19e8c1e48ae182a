"""Has the fine-tuning budget converged? Source-validation curves over budgets, read from long runs.

The student's learning rate is constant within a stage (Adam, no schedule), and the data stream of a stage does
not depend on its length, so the first ``N`` steps of a run trained for ``M > N`` steps *are* a run with budget
``N`` (to within its last evaluation: a run of ``N`` steps evaluates at step ``N - 1``, the longer one at the
next multiple of ``eval_every``). One run per (algorithm, target, seed) at the longest budget therefore gives
every shorter budget's outcome: for each ``N``, the checkpoint training-domain validation picks among the final
stage's evaluations at stage step ``<= N``, its source-validation accuracy (what selection sees) and its
out-of-domain accuracy (what a run with that budget would report).

A budget is **converged** for an algorithm when the last doubling moves the selected checkpoint's source
validation by less than ``tolerance`` points (mean over targets and seeds, and novel-class folds: runs of two folds or two datasets are
two trials). ``vl2v budget RUNS`` prints it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from vl2v.evaluation.tables import mean_se
from vl2v.runs.selection import final_stage, select_record, summarize
from vl2v.runs.summary import RunEntry, collect_runs

#: the budgets the issue asks for (fine-tuning steps)
DEFAULT_BUDGETS: tuple[int, ...] = (128, 256, 512, 1024)


@dataclass
class BudgetPoint:
    """One run's outcome had its final stage stopped after ``budget`` steps (accuracies 0..1)."""

    label: str
    target: str
    seed: int
    budget: int
    val_acc: float  # the selected checkpoint's training-domain validation accuracy
    ood_acc: float  # the same checkpoint's accuracy on the target's test split
    stage_step: int  # where in the final stage it was
    # the run's dataset and novel-class fold (when it holds classes out): runs of two folds, or of two datasets,
    # with the same target name and seed are two trials, not one
    trial: str = ""


def run_steps(records: Sequence[dict[str, Any]]) -> int:
    """How many steps the run's final stage ran (its last evaluation's stage step + 1)."""
    last = final_stage(records)
    return 1 + max(int(r.get("stage_step", 0)) for r in last) if last else 0


def _final_stage_tunes(e: RunEntry, stage: str | None) -> bool:
    """Whether the run's final stage fine-tunes the backbone (its data-stream record says so); a linear probe's
    budget is the frozen stages' and is not what this measures."""
    stages = ((e.summary.get("data_stream") or {}).get("stages") or {})
    return stage in stages and stages[stage].get("role") == "tune"


def budget_points(entries: Sequence[RunEntry], budgets: Sequence[int] = DEFAULT_BUDGETS) -> list[BudgetPoint]:
    """For every fine-tuned run and every budget it covers, the checkpoint selection would pick within it."""
    out: list[BudgetPoint] = []
    for e in entries:
        records = list(e.data.records or [])
        last = final_stage(records)
        if e.incomplete or not last or not _final_stage_tunes(e, last[0].get("stage")):
            continue  # an unfinished run's records stop early: it is not the budget's run
        steps = run_steps(records)
        target = e.domains[int(e.summary["target"])] if e.domains else str(e.summary["target"])
        fold = (e.args.get("novel_classes") or {}).get("fold")
        trial = e.dataset + ("" if fold is None else f", fold {fold}")
        for n in budgets:
            if n > steps:
                continue
            # the n-step run's evaluations: stage steps 0, eval_every, ... and its end (step n - 1); the long run
            # evaluates at the next multiple instead, within one step of it
            within = [r for r in last if int(r.get("stage_step", 0)) <= n]
            chosen = select_record(within)
            if chosen is None:
                continue
            s = summarize(chosen)
            out.append(BudgetPoint(e.label, target, int(e.summary.get("trial_seed", 0)), n, s["val_acc"], s["ood_acc"],
                                   int(chosen.get("stage_step", 0)), trial))
    return out


def collect_budget(paths: Sequence[str | Path], budgets: Sequence[int] = DEFAULT_BUDGETS) -> list[BudgetPoint]:
    return budget_points(collect_runs(list(paths)), budgets)


@dataclass
class BudgetRow:
    label: str
    runs: int
    val: dict[int, tuple[float, float]]  # budget -> (mean, SE) over runs, %
    ood: dict[int, tuple[float, float]]
    last_move: float | None  # points the last doubling moved source validation
    converged_at: int | None  # the smallest budget whose next doubling moves it by < tolerance
    over: str = "targets × seeds"  # what the mean runs over ("targets × seeds × novel-class folds" where held out)


def budget_rows(points: Sequence[BudgetPoint], tolerance: float = 0.5) -> list[BudgetRow]:
    """Per algorithm: mean ± SE over (target, seed) of the selected checkpoint's source validation and OOD
    accuracy at each budget; only runs that reach every listed budget count, so columns compare the same runs."""
    by_label: dict[str, dict[tuple[str, str, int], dict[int, BudgetPoint]]] = defaultdict(lambda: defaultdict(dict))
    for p in points:
        by_label[p.label][(p.trial, p.target, p.seed)][p.budget] = p
    rows = []
    for label, runs in by_label.items():
        budgets = sorted({b for r in runs.values() for b in r})
        full = [r for r in runs.values() if all(b in r for b in budgets)]
        val = {b: mean_se([100 * r[b].val_acc for r in full]) for b in budgets}
        ood = {b: mean_se([100 * r[b].ood_acc for r in full]) for b in budgets}
        moves = [val[b2][0] - val[b1][0] for b1, b2 in zip(budgets, budgets[1:])]
        # the first budget from which every further doubling moves validation by less than the tolerance
        conv = next((b for i, b in enumerate(budgets[:-1]) if all(abs(x) < tolerance for x in moves[i:])), None)
        folds = any(", fold " in trial for trial, _, _ in runs)
        rows.append(BudgetRow(label, len(full), val, ood, moves[-1] if moves else None, conv,
                              "targets × seeds × novel-class folds" if folds else "targets × seeds"))
    return sorted(rows, key=lambda r: r.label)


def budget_table(rows: Sequence[BudgetRow], tolerance: float = 0.5) -> str:
    """Markdown: source validation per budget (what decides convergence), then OOD accuracy per budget."""
    budgets = sorted({b for r in rows for b in r.val})
    cell = lambda ms: f"{ms[0]:.1f}" + (f" ± {ms[1]:.1f}" if ms[1] else "")  # noqa: E731
    head = "| Algorithm | runs | " + " | ".join(f"{b} steps" for b in budgets)
    over = " / ".join(dict.fromkeys(r.over for r in rows)) or "targets × seeds"
    lines = [f"**Source validation (%) of the checkpoint selected within each fine-tuning budget** (mean ± SE over "
             f"{over}; converged: every further doubling moves it by < {tolerance:g} points)", "",
             head + " | last doubling | converged from |", "|---|---:|" + "---:|" * len(budgets) + "---:|---|"]
    for r in rows:
        vals = [cell(r.val[b]) if b in r.val else "-" for b in budgets]
        move = "-" if r.last_move is None else f"{r.last_move:+.2f}"
        conv = f"{r.converged_at} steps" if r.converged_at is not None else f"not by {max(r.val)} steps"
        lines.append(f"| {r.label} | {r.runs} | " + " | ".join(vals) + f" | {move} | {conv} |")
    lines += ["", "**Out-of-domain accuracy (%) of the same checkpoints** (what a run with that budget reports; "
              "the target's test split, never used to choose anything here)", "",
              head + " |", "|---|---:|" + "---:|" * len(budgets)]
    for r in rows:
        lines.append(f"| {r.label} | {r.runs} | " + " | ".join(cell(r.ood[b]) if b in r.ood else "-" for b in budgets)
                     + " |")
    return "\n".join(lines)


def budget_figure(rows: Sequence[BudgetRow]):
    """Source validation and OOD accuracy against the budget (log2 x axis), one line per algorithm."""
    from matplotlib.figure import Figure

    if not rows:
        return None
    fig = Figure(figsize=(9, 3.8), dpi=110)
    for k, (what, title) in enumerate([("val", "source validation (selection sees this)"),
                                       ("ood", "target test split (reported)")]):
        ax = fig.add_subplot(1, 2, k + 1)
        for r in rows:
            d = getattr(r, what)
            xs = sorted(d)
            ax.errorbar(xs, [d[b][0] for b in xs], yerr=[d[b][1] for b in xs], marker="o", ms=3, capsize=2,
                        label=r.label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("fine-tuning steps")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def budget_data(rows: Sequence[BudgetRow]) -> list[dict[str, Any]]:
    return [{"label": r.label, "runs": r.runs, "last_doubling": None if r.last_move is None else round(r.last_move, 3),
             "converged_from": r.converged_at,
             "val": {str(b): [round(m, 2), round(s, 2)] for b, (m, s) in r.val.items()},
             "ood": {str(b): [round(m, 2), round(s, 2)] for b, (m, s) in r.ood.items()}} for r in rows]


__all__ = ["DEFAULT_BUDGETS", "BudgetPoint", "BudgetRow", "budget_data", "budget_figure", "budget_points",
           "budget_rows", "budget_table", "collect_budget", "run_steps"]
