"""vl2v.runs: the run-folder layout, reading a finished run, labels, grouping, and selection on hand-made records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vl2v.runs import (
    ExperimentDir,
    RunDir,
    RunRecorder,
    SweepDir,
    collect_runs,
    find_runs,
    group_by_dataset,
    label,
    run_summary,
    select_record,
    selection_value,
    summarize,
)
from vl2v.utils.io import atomic_write_json, atomic_write_text

DOMAINS = ["art", "photo", "sketch"]


# --------------------------------------------------------------------------- names
def test_run_dir_names_every_file(tmp_path):
    rd = RunDir(tmp_path / "r")
    p = tmp_path / "r"
    assert rd.path == p
    assert rd.config_json == p / "config.json"
    assert rd.results_jsonl == p / "results.jsonl"
    assert rd.final_json == p / "final.json"
    assert rd.done == p / "done"
    assert rd.model == p / "model.safetensors"
    assert rd.swad == p / "swad.safetensors"
    assert rd.last_weights == p / "last.safetensors"
    assert rd.predictions == p / "predictions.json"
    assert rd.export_dir == p / "export"
    assert rd.checkpoints == p / "checkpoints"
    assert rd.last_state == p / "checkpoints" / "last.pt"
    assert rd.best == p / "checkpoints" / "best.safetensors"
    assert rd.stage_best(0) == p / "checkpoints" / "stage0_best.safetensors"
    assert rd.stage_best(3) == p / "checkpoints" / "stage3_best.safetensors"
    assert rd.weights("selected") == rd.model and rd.weights("swad") == rd.swad
    assert RunDir.which_weights(rd.swad) == "swad" and RunDir.which_weights(rd.model) == "selected"

    exp = ExperimentDir(tmp_path)
    assert exp.experiment_json == tmp_path / "experiment.json"
    assert exp.results_md == tmp_path / "results.md"
    assert exp.summary_json == tmp_path / "summary.json"
    assert exp.report_html == tmp_path / "report.html"

    job = SweepDir(tmp_path).job("abc123")
    assert SweepDir(tmp_path).sweep_json == tmp_path / "sweep.json"
    assert job.path == tmp_path / "jobs" / "abc123"
    assert (job.job_json, job.job_done, job.log) == (job.path / "job.json", job.path / "job.done", job.path / "log.txt")
    assert job.experiment_json == job.path / "experiment.json"  # a job is an experiment folder


def _old_run_name(algorithm, hparams, target, domains, trial_seed):
    """RunSpec.run_name as it was in training/loop.py before the move to vl2v.runs."""
    hp = "".join(f"_{k}{v}" for k, v in hparams)
    return f"{algorithm}{hp}/target-{target}-{domains[target]}/seed{trial_seed}"


@pytest.mark.parametrize("algorithm,hparams,target,seed", [
    ("erm_lp", (), 0, 0),
    ("adip", (("lam", "0.25"),), 1, 1),
    ("kd", (("alpha", "0.5"), ("temperature", "4")), 2, 7),
    ("zeroshot", (), 2, 0),
])
def test_for_spec_matches_the_old_run_name(tmp_path, algorithm, hparams, target, seed):
    rd = RunDir.for_spec(tmp_path, algorithm, hparams, target, DOMAINS, seed)
    assert rd.path == tmp_path / _old_run_name(algorithm, hparams, target, DOMAINS, seed)
    assert ExperimentDir(tmp_path).run(algorithm, hparams, target, DOMAINS, seed) == rd


def test_for_spec_literal_names(tmp_path):
    assert RunDir.for_spec(tmp_path, "adip", (("lam", "0.25"),), 1, DOMAINS, 1).path == \
        tmp_path / "adip_lam0.25" / "target-1-photo" / "seed1"
    assert RunDir.for_spec("out", "erm_ft", (), 2, DOMAINS, 0).path == Path("out/erm_ft/target-2-sketch/seed0")


def test_label_is_the_protocol_label():
    from vl2v.experiment.setup import AlgoSpec

    assert label("adip") == "adip"
    assert label("adip", [("lam", "0.25")]) == "adip (lam=0.25)"
    assert label("kd", [["alpha", "0.5"], ["temperature", 4]]) == "kd (alpha=0.5, temperature=4)"  # as in config.json
    assert AlgoSpec.parse("adip:lam=0.25").label == "adip (lam=0.25)"
    assert AlgoSpec.parse("erm_lp").label == "erm_lp"


# --------------------------------------------------------------------------- records and selection
def rec(step, outs, target_in, test_env=1, stage="s"):
    r = {"args": {"test_envs": [test_env]}, "step": step, "stage": stage, f"env{test_env}_in_acc": target_in}
    for i, v in enumerate(outs):
        r[f"env{i}_out_acc"] = v
    return r


RECORDS = [  # target env1; sources env0, env2
    rec(0, [0.50, 0.60, 0.50], 0.30),
    rec(100, [0.90, 0.40, 0.80], 0.45),  # best source mean (0.85)
    rec(200, [0.60, 0.95, 0.60], 0.70),  # best target 'out' (0.95)
    rec(300, [0.70, 0.80, 0.70], 0.65),  # last
]


def test_training_domain_selection_uses_only_source_out():
    best = select_record(RECORDS)
    assert best is select_record(RECORDS, method="training_domain")
    assert best["step"] == 100
    s = summarize(best)
    assert s == {"step": 100, "stage": "s", "ood_acc": pytest.approx(0.45), "val_acc": pytest.approx(0.85),
                 "id_acc": pytest.approx(0.85)}


def test_oracle_selection_is_domainbeds_last_checkpoint_validated_on_the_target():
    # DomainBed's OracleSelectionMethod: the last checkpoint of a run (no early stopping on test data);
    # its validation accuracy is the target domain's 'out' split
    chosen = select_record(RECORDS, method="oracle")
    assert chosen["step"] == 300
    assert select_record(list(reversed(RECORDS)), method="oracle")["step"] == 300  # by step, not file order
    s = summarize(chosen, method="oracle")
    assert s["val_acc"] == pytest.approx(0.80)  # env1_out_acc, the target's
    assert s["ood_acc"] == pytest.approx(0.65) and s["id_acc"] == pytest.approx(0.70)
    assert selection_value(chosen, "oracle") == pytest.approx(0.80)
    assert selection_value(chosen) == pytest.approx(0.70)


def test_oracle_picks_runs_by_target_out_accuracy():
    """Across runs (e.g. hyperparameters) the oracle keeps the run whose last record has the best target 'out'."""
    run_a = [rec(0, [0.9, 0.2, 0.9], 0.5), rec(10, [0.9, 0.3, 0.9], 0.6)]  # better sources, worse target out
    run_b = [rec(0, [0.5, 0.6, 0.5], 0.7), rec(10, [0.5, 0.7, 0.5], 0.8)]
    lasts = [select_record(r, "oracle") for r in (run_a, run_b)]
    assert max(lasts, key=lambda r: selection_value(r, "oracle")) is lasts[1]
    bests = [select_record(r) for r in (run_a, run_b)]
    assert max(bests, key=selection_value) is bests[0]  # training-domain validation prefers run_a


def test_selection_edge_cases():
    assert select_record([]) is None and select_record([], method="oracle") is None
    with pytest.raises(ValueError, match="unknown selection method"):
        select_record(RECORDS, method="test_domain")


# --------------------------------------------------------------------------- a tiny finished run
def _write_run(rd: RunDir, algorithm="adip", hparams=(("lam", "0.25"),), target=1, seed=0, finished=True,
               dataset="Tiny", teacher=("tiny", "tiny")):
    args = {"dataset": dataset, "algorithm": algorithm, "test_envs": [target], "trial_seed": seed,
            "hparams_seed": 0, "output_dir": str(rd.path), "teacher": teacher[0], "teacher_identity": teacher[1]}
    rr = RunRecorder(rd.path, args=args, hparams={"lam": 0.25})
    rd.path.mkdir(parents=True)
    atomic_write_json(rd.config_json, {"spec": {"algorithm": algorithm, "target": target, "trial_seed": seed,
                                                "hparams_seed": 0, "hparams": [list(h) for h in hparams]},
                                       "args": args, "domains": DOMAINS, "classes": ["cat", "dog"]})
    for step, outs, tin in [(0, [0.5, 0.6, 0.5], 0.3), (10, [0.9, 0.4, 0.8], 0.45), (20, [0.6, 0.9, 0.6], 0.7)]:
        rr.write(step=step, stage="align", stage_step=step, loss=1.0,
                 evals={**{f"env{i}_out_acc": v for i, v in enumerate(outs)}, f"env{target}_in_acc": tin}, wall=1.0)
    if finished:
        atomic_write_json(rd.final_json, {"run_dir": str(rd.path), "algorithm": algorithm, "target": target,
                                          "target_name": DOMAINS[target], "trial_seed": seed,
                                          "selected": summarize(select_record(rr.records()))})
        atomic_write_json(rd.predictions, {"domain": DOMAINS[target], "split": "in", "items": []})
        atomic_write_text(rd.done, "done")
    return rr


def test_reading_a_finished_run(tmp_path):
    rd = RunDir.for_spec(tmp_path, "adip", (("lam", "0.25"),), 1, DOMAINS, 0)
    rr = _write_run(rd)
    assert rd.is_run() and rd.is_done() and rd.has_config()
    assert [r["step"] for r in rd.records()] == [0, 10, 20] == [r["step"] for r in rr.records()]
    assert rd.config()["domains"] == DOMAINS
    assert rd.final()["selected"]["step"] == 10 and rd.final()["selected"]["ood_acc"] == pytest.approx(0.45)
    assert rd.load_predictions()["domain"] == "photo"
    data = rd.load()
    assert data.done and data.path == rd.path and len(data.records) == 3 and data.final == rd.final()
    s = rd.summary()
    assert s == run_summary(rd.path) == run_summary(data)
    assert s["label"] == "adip (lam=0.25)" and s["_dataset"] == "Tiny" and s["_domains"] == DOMAINS
    assert "incomplete" not in s
    # the file's own bytes: sorted keys, one JSON object per line (DomainBed's collect_results reads them)
    first = rd.results_jsonl.read_text().splitlines()[0]
    assert json.loads(first)["args"]["dataset"] == "Tiny" and first.startswith('{"args": ')


def test_an_unfinished_run_is_summarised_from_its_records(tmp_path):
    rd = RunDir.for_spec(tmp_path, "erm_lp", (), 0, DOMAINS, 2)
    _write_run(rd, "erm_lp", (), target=0, seed=2, finished=False)
    assert not rd.is_done() and rd.final() is None and rd.load_predictions() is None
    s = rd.summary()
    assert s["incomplete"] and s["label"] == "erm_lp" and s["target"] == 0 and s["trial_seed"] == 2
    assert s["selected"]["step"] == 20  # sources env1, env2: (0.9 + 0.6) / 2 at step 20
    assert s["run_dir"] == str(rd.path)
    empty = RunDir(tmp_path / "empty")
    empty.path.mkdir()
    empty.results_jsonl.write_text("")
    assert empty.summary() is None and empty.config() is None and empty.records() == []


def test_find_runs_collect_and_group_by_dataset(tmp_path):
    out = tmp_path / "out"
    _write_run(RunDir.for_spec(out, "adip", (("lam", "0.25"),), 1, DOMAINS, 0))
    _write_run(RunDir.for_spec(out, "adip", (("lam", "0.25"),), 1, DOMAINS, 1), seed=1)
    _write_run(RunDir.for_spec(out, "erm_lp", (), 0, DOMAINS, 0), "erm_lp", (), target=0, finished=False)
    other = tmp_path / "other"
    _write_run(RunDir.for_spec(other, "kd", (), 2, DOMAINS, 0), "kd", (), target=2, dataset="Other")
    runs = find_runs([out, other])
    assert runs == sorted(runs) and len(runs) == 4
    assert ExperimentDir(out).find_runs() == find_runs([out])
    assert find_runs([runs[0]]) == [runs[0]]  # a run folder itself
    with pytest.raises(FileNotFoundError):
        find_runs([tmp_path / "missing"])
    groups = group_by_dataset(collect_runs([out, other]))
    assert list(groups) == ["Other", "Tiny"]  # in the order of the sorted run folders (other/ < out/)
    tiny = groups["Tiny"]
    assert tiny.domains == DOMAINS and tiny.classes == ["cat", "dog"] and len(tiny.entries) == 3
    assert tiny.incomplete == 1 and tiny.domain_names() == DOMAINS
    assert sorted(f["label"] for f in tiny.finals) == ["adip (lam=0.25)", "adip (lam=0.25)", "erm_lp"]


def test_runs_of_two_teachers_are_separate_rows(tmp_path):
    """`vl2v report runs/conse runs/lit`: an algorithm run with both teachers gets one row per teacher."""
    a, b = tmp_path / "conse", tmp_path / "lit"
    _write_run(RunDir.for_spec(a, "adip", (), 1, DOMAINS, 0), hparams=(), teacher=("conse", "conse(k=10)"))
    _write_run(RunDir.for_spec(a, "erm_lp", (), 1, DOMAINS, 0), "erm_lp", (), teacher=("conse", "conse(k=10)"))
    _write_run(RunDir.for_spec(b, "adip", (), 1, DOMAINS, 0), hparams=(), teacher=("lit", "lit(weights=1)"))
    c = tmp_path / "lit2"  # a second build under the same name: told apart by a digest of its identity
    _write_run(RunDir.for_spec(c, "adip", (), 1, DOMAINS, 0), hparams=(), teacher=("lit", "lit(weights=2)"))
    labels = sorted(f["label"] for f in group_by_dataset(collect_runs([a, b]))["Tiny"].finals)
    assert labels == ["adip [teacher conse]", "adip [teacher lit]", "erm_lp"]
    labels = sorted(f["label"] for f in group_by_dataset(collect_runs([a, b, c]))["Tiny"].finals)
    assert labels[0] == "adip [teacher conse]" and len(set(labels)) == 4
    assert labels[1].startswith("adip [teacher lit ") and labels[2].startswith("adip [teacher lit ")
    assert [f["label"] for f in group_by_dataset(collect_runs([b]))["Tiny"].finals] == ["adip"]


def test_experiment_dir_config(tmp_path):
    exp = ExperimentDir(tmp_path)
    assert not exp.exists()
    atomic_write_json(exp.experiment_json, {"config": {"dataset": "Tiny", "seeds": [0]}, "domains": DOMAINS})
    assert exp.exists() and exp.load()["domains"] == DOMAINS
    assert exp.load_config_dict() == {"dataset": "Tiny", "seeds": [0]}


def test_runs_does_not_import_training_or_evaluation():
    import subprocess
    import sys

    code = ("import sys, vl2v.runs, vl2v.runs.model; "
            "bad = [m for m in sys.modules if m.startswith(('vl2v.training', 'vl2v.evaluation'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
