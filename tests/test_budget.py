"""`vl2v budget`: a long run's first N fine-tuning steps are the N-step run, and the table reads them."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from conftest import build_image_folder
from helpers import tiny_cfg
from vl2v.evaluation.budget import BudgetPoint, budget_rows, budget_table, collect_budget

_ACC = ("env0_in_acc", "env1_out_acc", "env2_out_acc", "val_acc", "loss")


def _records(root, algo):
    path = next(root.glob(f"{algo}/target-*/seed0/results.jsonl"))
    return {r["stage_step"]: r for r in map(json.loads, path.read_text().splitlines()) if r["stage"] == "ft" or
            r["stage"] == "distill"}


def test_a_long_run_starts_as_the_short_run_and_the_budget_table_reads_it(tmp_path, capsys):
    from vl2v.cli import main
    from vl2v.experiment.run import run_experiment

    folder = build_image_folder(tmp_path / "d", per_class=5)
    runs = {}
    for steps in (4, 8):
        cfg = tiny_cfg(folder, tmp_path / f"s{steps}", ["erm_ft", "adip", "erm_lp"], targets=(0,))
        cfg = replace(cfg, train=replace(cfg.train, schedule=replace(cfg.train.schedule, steps=steps)))
        run_experiment(cfg, log=lambda s: None)
        runs[steps] = tmp_path / f"s{steps}"
    for algo in ("erm_ft", "adip"):
        short, long = _records(runs[4], algo), _records(runs[8], algo)
        assert sorted(short) == [0, 2, 3] and sorted(long) == [0, 2, 4, 6, 7]
        for step in (0, 2):  # the evaluations both runs made: the same model, digit for digit
            assert {k: short[step][k] for k in _ACC} == {k: long[step][k] for k in _ACC}, (algo, step)

    points = collect_budget([runs[8]], budgets=(2, 4, 8, 16))
    assert {p.label for p in points} == {"erm_ft", "adip"}  # erm_lp has no fine-tuning stage
    assert {p.budget for p in points} == {2, 4, 8}  # 16 is beyond the runs
    erm = {p.budget: p for p in points if p.label == "erm_ft"}
    long = _records(runs[8], "erm_ft")
    assert erm[8].val_acc == max(long[s]["val_acc"] for s in long)  # selection over the whole final stage
    assert erm[2].val_acc == max(long[s]["val_acc"] for s in (0, 2))
    assert erm[2].val_acc <= erm[4].val_acc <= erm[8].val_acc  # best-so-far can only rise

    capsys.readouterr()
    assert main(["budget", str(runs[8]), "--budgets", "2", "4", "8", "--out", str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "| erm_ft | 1 |" in out and "| adip | 1 |" in out and "erm_lp" not in out
    assert (tmp_path / "b" / "budget.png").stat().st_size > 1000
    data = json.loads((tmp_path / "b" / "budget.json").read_text())
    assert {r["label"] for r in data["rows"]} == {"erm_ft", "adip"}
    assert main(["budget", str(runs[8]), "--budgets", "64"]) == 2  # no run reaches it: a one-line error
    assert main(["budget", str(runs[8]), "--budgets", "0"]) == 2


def _pt(label, target, budget, val):
    return BudgetPoint(label, target, 0, budget, val, val - 0.1, budget - 1)


def test_convergence_is_the_budget_from_which_every_doubling_moves_validation_by_less_than_the_tolerance():
    pts = [_pt("a", t, b, v) for t in ("x", "y") for b, v in ((128, 0.70), (256, 0.74), (512, 0.743), (1024, 0.745))]
    pts += [_pt("b", t, b, v) for t in ("x", "y") for b, v in ((128, 0.70), (256, 0.702), (512, 0.72), (1024, 0.73))]
    pts += [_pt("c", "x", 128, 0.5), _pt("c", "x", 256, 0.5), _pt("c", "y", 128, 0.9)]  # y stops early: left out
    rows = {r.label: r for r in budget_rows(pts, tolerance=0.5)}
    assert rows["a"].converged_at == 256 and rows["a"].last_move == pytest.approx(0.2)
    assert rows["b"].converged_at is None and rows["b"].last_move == pytest.approx(1.0)  # a late rise counts
    assert rows["c"].runs == 1 and rows["c"].val[128][0] == pytest.approx(50.0)
    table = budget_table(list(rows.values()))
    assert "| a | 2 | 70.0 | 74.0 | 74.3 | 74.5 | +0.20 | 256 steps |" in table
    assert "not by 1024 steps" in table


def _entry(fold, val):
    """A finished fine-tuned run as budget_points reads it: two evaluations of its final (tuning) stage."""
    from types import SimpleNamespace
    recs = [{"stage": "ft", "step": s, "stage_step": s, "env1_in_acc": v - 0.1, "env1_out_acc": v - 0.1,
             "env0_out_acc": v, "args": {"test_envs": [1]}} for s, v in ((0, 0.5), (3, val))]
    args = {"novel_classes": {"count": 3, "fold": fold}} if fold is not None else {}
    return SimpleNamespace(data=SimpleNamespace(records=recs), incomplete=False, label="adip", domains=["a", "b"],
                           summary={"target": 1, "trial_seed": 0, "data_stream": {"stages": {"ft": {"role": "tune"}}}},
                           args=args, dataset="D" + (", 3 classes held out" if fold is not None else ""))


def test_runs_of_two_novel_class_folds_with_the_same_target_and_seed_are_two_trials():
    from vl2v.evaluation.budget import budget_points
    pts = budget_points([_entry(0, 0.6), _entry(1, 0.8)], budgets=(4,))
    assert len({p.trial for p in pts}) == 2
    (row,) = budget_rows(pts)
    assert row.runs == 2 and row.val[4][0] == pytest.approx(70.0)  # both folds, not the last one read
    assert "targets × seeds × novel-class folds" in budget_table([row])
    (plain,) = budget_rows(budget_points([_entry(None, 0.6)], budgets=(4,)))
    assert plain.runs == 1 and "over targets × seeds;" in budget_table([plain])
