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


def test_mean_se_is_domainbeds():
    m, se = mean_se([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7)
    # DomainBed's collect_results: np.std (population, ddof=0) over sqrt(n); the sample std would give 0.2/sqrt(3)
    assert se == pytest.approx((0.08 / 3) ** 0.5 / 3 ** 0.5)
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
    # rows over different numbers of trials say how many each holds
    assert "| adip (n=2) | 60.0 ± 7.1 | 80.0 ± 7.1 | 70.0 ± 7.1 |" in md
    assert "| kd (n=1) | 30.0 | - | - |" in md and "SWAD" not in md  # the selected checkpoints' table
    assert r"60.0 $\pm$ 7.1" in ood.latex() and "kd (n=1)" in ood.latex()
    # a SWAD result makes SWAD the headline: first, captioned SWAD; runs without one show their selected
    # checkpoint, marked
    assert list(tables) == ["swad_ood", "swad_id", "ood", "id"]
    sw = tables["swad_ood"].markdown()
    assert "| kd (n=1) | 35.0 | - | - |" in sw and "| adip † (n=2) | 60.0 ± 7.1 | 80.0 ± 7.1 | 70.0 ± 7.1 |" in sw
    (first, cap1), (_, cap2), (third, cap3), _ = table_sections(tables, "OOD", "ID")
    assert first is tables["swad_ood"] and cap1.startswith("SWAD") and "†" in cap1 and third is ood
    assert cap3 == "Selected checkpoint: OOD"


def test_rows_name_their_trial_count_only_when_it_differs():
    """A table whose rows all hold the same trials prints bare names (every earlier table is unchanged); one
    that mixes, say, 9 fold × seed trials with 3, labels every row with its count."""
    same = build_tables([{"algorithm": a, "target": t, "trial_seed": s, "selected": {"ood_acc": 0.5, "id_acc": 0.9}}
                         for a in ("adip", "kd") for t in (0, 1) for s in (0, 1)], ["a", "b"])["ood"]
    assert "| adip | 50.0 ± 0.0 |" in same.markdown() and "(n=" not in same.markdown() + same.latex()
    mixed = build_tables([{"algorithm": "adip", "target": t, "trial_seed": s, "selected": {"ood_acc": 0.5, "id_acc": 0.9}}
                          for t in (0, 1) for s in (0, 1, 2)]
                         + [{"algorithm": "sd", "target": t, "trial_seed": 0, "selected": {"ood_acc": 0.4, "id_acc": 0.9}}
                            for t in (0, 1)], ["a", "b"])["ood"]
    assert mixed.trials("adip") == 3 and mixed.trials("sd") == 1
    md = mixed.markdown()
    assert "| adip (n=3) | 50.0 ± 0.0 | 50.0 ± 0.0 | 50.0 ± 0.0 |" in md and "| sd (n=1) | 40.0 | 40.0 | 40.0 |" in md


def test_tables_without_swad_are_unchanged():
    finals = [{"algorithm": "adip", "target": 0, "trial_seed": 0, "selected": {"ood_acc": 0.5, "id_acc": 0.9}},
              {"algorithm": "kd", "target": 0, "trial_seed": 0, "selected": {"ood_acc": 0.3, "id_acc": 0.8},
               "swad": {"note": "SWAD found no loss valley"}}]
    tables = build_tables(finals, ["a", "b"])
    assert list(tables) == ["ood", "id"]
    assert table_sections(tables, "OOD", "ID") == [(tables["ood"], "OOD"), (tables["id"], "ID")]


def test_oracle_and_final_stage_selection():
    """Oracle (DomainBed's test-domain validation) takes the last evaluation; 'final' stage selection ignores
    earlier stages even when one of them validated better."""
    recs = [dict(rec(0, [0.9, 0.2, 0.9], 0.5), stage="align"), dict(rec(5, [0.6, 0.3, 0.6], 0.6), stage="distill"),
            dict(rec(9, [0.7, 0.4, 0.7], 0.7), stage="distill")]
    assert select_record(recs)["step"] == 0
    assert select_record(recs, stages="final")["step"] == 9
    assert select_record(recs, "oracle")["step"] == 9
    s = summarize(select_record(recs, "oracle"), "oracle")
    assert s["ood_acc"] == pytest.approx(0.7) and s["val_acc"] == pytest.approx(recs[2]["env1_out_acc"])
    finals = [{"algorithm": "adip", "target": 1, "trial_seed": 0, "selected": {"ood_acc": 0.5, "id_acc": 0.9},
               "oracle": {"ood_acc": 0.7, "id_acc": 0.7}}]
    tables = build_tables(finals, ["a", "b", "c"])
    assert tables["oracle_ood"].cell("adip", 1) == [pytest.approx(0.7)]


def test_adip_with_final_stage_selection_selects_a_distill_checkpoint(image_folder, tmp_path):
    import json

    from safetensors import safe_open

    from vl2v.config import ExperimentConfig, Schedule, TrainConfig
    from vl2v.experiment.run import run_experiment

    train = TrainConfig(schedule=Schedule(steps=3, frozen_steps=4, lr=1e-3, frozen_lr=1e-2), batch_size=4,
                        eval_every=2, image_size=32, device="cpu", select_stage="final")
    cfg = ExperimentConfig(dataset=None, data_dir=str(image_folder), out_dir=str(tmp_path / "o"), algorithms=("adip",),
                           targets=(0,), student_pretrained=False, store="memory", teacher="tiny-test", train=train)
    result = run_experiment(cfg, log=lambda *_: None)
    (final,) = result["finals"]
    assert final["selected"]["stage"] == "distill" and final["selection"]["stages"] == "final"
    assert final["oracle"]["stage"] == "distill"
    (model,) = (tmp_path / "o").rglob("model.safetensors")
    with safe_open(str(model), framework="pt") as fh:
        assert json.loads(fh.metadata()["stage"]) == "distill"
    assert "Checkpoint chosen by training-domain validation" in result["text"] and "distill@" in result["text"]
    assert "test-domain validation (oracle" in result["text"]
