"""End to end on tiny data: every algorithm trains a few steps, records are DomainBed-readable."""

import json

import pytest
import torch

from helpers import tiny_cfg
from vl2v.cli import main
from vl2v.experiment.run import run_experiment
from vl2v.methods import list_algorithms

ALL = [a.name for a in list_algorithms()]


def test_every_algorithm_trains_and_writes_domainbed_records(image_folder, tmp_path):
    cfg = tiny_cfg(image_folder, tmp_path / "runs", ALL, targets=(0,), swad=True)
    result = run_experiment(cfg, log=lambda s: None)
    assert {f["algorithm"] for f in result["finals"]} == set(ALL)
    for f in result["finals"]:
        run = tmp_path / "runs" / f["algorithm"] / "target-0-art" / "seed0"
        assert (run / "done").read_text() == "done"
        recs = [json.loads(l) for l in (run / "results.jsonl").read_text().splitlines()]
        assert recs
        for r in recs:
            for k in ("dataset", "algorithm", "test_envs", "trial_seed", "hparams_seed"):
                assert k in r["args"]
            assert r["args"]["test_envs"] == [0]
            for i in range(3):
                assert 0.0 <= r[f"env{i}_out_acc"] <= 1.0
            assert "env0_in_acc" in r and "step" in r and "hparams" in r and "wall_time" in r
            assert "teacher_image_queries" in r
        assert 0.0 <= f["selected"]["ood_acc"] <= 1.0
        if f["algorithm"] != "zeroshot":
            assert (run / "model.safetensors").exists() and (run / "config.json").exists()
    text = result["text"]
    for a in ALL:
        assert f"| {a} |" in text


def test_distill_starts_from_best_align_checkpoint(image_folder, tmp_path, monkeypatch):
    from vl2v.methods.adip import ADiP
    from vl2v.training import stages as loop  # the stage runner keeps each stage's best

    saved, seen = {}, {}
    real_save = loop.save_weights

    def spy_save(path, state, meta=None):
        if path.name == "stage0_best.safetensors" and meta["stage"] == "align":
            saved["projection"] = state["projection.weight"].clone()
        real_save(path, state, meta)

    real_begin = ADiP.begin_stage

    def spy_begin(self, stage):
        if stage.name == "distill":
            seen["projection"] = self.projection.weight.detach().clone()
        real_begin(self, stage)

    monkeypatch.setattr(loop, "save_weights", spy_save)
    monkeypatch.setattr(ADiP, "begin_stage", spy_begin)
    run_experiment(tiny_cfg(image_folder, tmp_path / "r", ["adip"], targets=(1,)), log=lambda s: None)
    assert torch.equal(saved["projection"], seen["projection"])


def test_finished_runs_are_skipped(image_folder, tmp_path, monkeypatch):
    cfg = tiny_cfg(image_folder, tmp_path / "runs", ["erm_lp"], targets=(2,))
    first = run_experiment(cfg, log=lambda s: None)["finals"][0]
    from vl2v.training.evaluator import Evaluator

    monkeypatch.setattr(Evaluator, "evaluate", lambda *a, **k: pytest.fail("a finished run was trained again"))
    again = run_experiment(cfg, log=lambda s: None)["finals"][0]
    assert again["selected"] == first["selected"]


def test_cli_train_and_report(image_folder, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["train", "--data", str(image_folder), "--algorithm", "adip:lam=0.25", "erm_lp", "--target", "photo",
               "--teacher", "tiny-test", "--store", "memory", "--no-pretrained", "--steps", "3", "--frozen-steps", "3",
               "--batch-size", "4", "--image-size", "32", "--eval-every", "2", "--trials", "2", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| adip (lam=0.25) |" in text and "| erm_lp |" in text
    assert (out / "adip_lam0.25" / "target-1-photo" / "seed1" / "done").exists()
    rc = main(["report", str(out), "--latex"])
    rep = capsys.readouterr().out
    assert rc == 0 and "trial seeds [0, 1]" in rep and "\\begin{tabular}" in rep
    # the photo column has mean ± SE over the 2 seeds
    row = next(l for l in rep.splitlines() if l.startswith("| erm_lp |"))
    assert "±" in row.split("|")[3]


@pytest.mark.parametrize("argv,msg", [
    (["--algorithm", "nope"], "unknown algorithm 'nope'"),
    (["--algorithm", "adip:lam=2"], "lam"),
    (["--teacher", "nope"], "unknown teacher"),
    (["--student", "nope"], "unknown student"),
    (["--target", "mars"], "unknown target domain 'mars'"),
    (["--target", "7"], "target 7 out of range"),
])
def test_cli_bad_configuration_fails_before_work(image_folder, tmp_path, capsys, argv, msg):
    rc = main(["train", "--data", str(image_folder), "--teacher", "tiny-test", "--store", "memory",
               "--out", str(tmp_path / "x")] + argv)
    assert rc == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").rglob("results.jsonl"))


def test_one_domain_dataset_is_refused(tmp_path, capsys):
    from conftest import build_image_folder

    folder = build_image_folder(tmp_path / "one", domains=("only",))
    rc = main(["train", "--data", str(folder), "--teacher", "tiny-test", "--store", "memory", "--out", str(tmp_path / "o")])
    assert rc == 2 and "at least 2 domains" in capsys.readouterr().err
