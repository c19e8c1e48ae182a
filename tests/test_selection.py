"""Training-domain validation on hand-made records, and the result tables."""

import pytest

from vl2v.evaluation.tables import build_tables, mean_se, table_sections
from vl2v.runs.selection import select_record, summarize


def rec(step, outs, target_in, test_env=1):
    r = {"args": {"test_envs": [test_env]}, "step": step, f"env{test_env}_in_acc": target_in}
    for i, v in enumerate(outs):
        r[f"env{i}_out_acc"] = v
    return r


def test_selects_best_mean_source_out_accuracy_not_target():
    recs = [
        rec(0, [0.50, 0.99, 0.50], 0.99),  # env1 is the target: its out acc must not count
        rec(200, [0.80, 0.10, 0.70], 0.40),  # mean over sources 0.75 (best)
        rec(400, [0.70, 0.90, 0.70], 0.95),  # 0.70
    ]
    best = select_record(recs)
    assert best["step"] == 200
    s = summarize(best)
    assert s["ood_acc"] == pytest.approx(0.40)
    assert s["id_acc"] == pytest.approx(0.75)
    assert s["val_acc"] == pytest.approx(0.75)


def test_ties_go_to_earliest_record():
    recs = [rec(0, [0.6, 0, 0.6], 0.1), rec(10, [0.6, 0, 0.6], 0.9)]
    assert select_record(recs)["step"] == 0


def test_mean_se_uses_sample_std():
    m, se = mean_se([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7)
    assert se == pytest.approx(0.2 / 3 ** 0.5)  # sample std 0.2 over sqrt(3)
    assert mean_se([0.4]) == (pytest.approx(0.4), 0.0)


def test_table_avg_is_per_trial_mean_over_targets():
    finals = []
    for seed, accs in [(0, [0.5, 0.7]), (1, [0.7, 0.9])]:
        for t, a in enumerate(accs):
            finals.append({"algorithm": "adip", "target": t, "trial_seed": seed,
                           "selected": {"ood_acc": a, "id_acc": 0.9}})
    finals.append({"algorithm": "kd", "target": 0, "trial_seed": 0, "selected": {"ood_acc": 0.3, "id_acc": 0.8},
                   "swad": {"ood_acc": 0.35, "id_acc": 0.81}})
    tables = build_tables(finals, ["a", "b"])
    ood = tables["ood"]
    assert ood.avg_values("adip") == [pytest.approx(0.6), pytest.approx(0.8)]
    assert ood.avg_values("kd") == []  # target b missing -> no average
    md = ood.markdown()
    assert "| adip | 60.0 ± 10.0 | 80.0 ± 10.0 | 70.0 ± 10.0 |" in md
    assert "| kd | 30.0 | - | - |" in md and "SWAD" not in md  # the selected checkpoints' table
    assert r"60.0 $\pm$ 10.0" in ood.latex()
    # a SWAD result makes SWAD the headline: first, captioned SWAD; runs without one show their selected
    # checkpoint, marked
    assert list(tables) == ["swad_ood", "swad_id", "ood", "id"]
    sw = tables["swad_ood"].markdown()
    assert "| kd | 35.0 | - | - |" in sw and "| adip † | 60.0 ± 10.0 | 80.0 ± 10.0 | 70.0 ± 10.0 |" in sw
    (first, cap1), (_, cap2), (third, cap3), _ = table_sections(tables, "OOD", "ID")
    assert first is tables["swad_ood"] and cap1.startswith("SWAD") and "†" in cap1 and third is ood
    assert cap3 == "Selected checkpoint: OOD"


def test_tables_without_swad_are_unchanged():
    finals = [{"algorithm": "adip", "target": 0, "trial_seed": 0, "selected": {"ood_acc": 0.5, "id_acc": 0.9}},
              {"algorithm": "kd", "target": 0, "trial_seed": 0, "selected": {"ood_acc": 0.3, "id_acc": 0.8},
               "swad": {"note": "SWAD found no loss valley"}}]
    tables = build_tables(finals, ["a", "b"])
    assert list(tables) == ["ood", "id"]
    assert table_sections(tables, "OOD", "ID") == [(tables["ood"], "OOD"), (tables["id"], "ID")]
