"""A finished RISE run loads for predict/export/eval without its teacher: the anchor phrases' embeddings are in
its checkpoint (loading used to fail with "rise needs a teacher ... missing: text embeddings")."""

from __future__ import annotations

from pathlib import Path

from helpers import tiny_cfg
from vl2v.experiment.run import run_experiment
from vl2v.runs.layout import RunDir


def test_a_rise_run_predicts_what_it_recorded(image_folder, tmp_path):
    from vl2v.serving.predict import load_predictor

    run_experiment(tiny_cfg(image_folder, tmp_path / "runs", ["rise"], targets=(1,)), log=lambda s: None)
    run = tmp_path / "runs" / "rise" / "target-1-photo" / "seed0"
    recorded = RunDir(run).load_predictions()
    pred = load_predictor(run)
    files = [Path(recorded["root"]) / it["path"] for it in recorded["items"]]
    got = pred.predict_files(files, topk=1)
    assert [recorded["classes"].index(p.top[0][0]) for p in got] == [it["pred"] for it in recorded["items"]]
