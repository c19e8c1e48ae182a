"""The novel-class benchmark (--novel-classes K --novel-fold F): classes held out of training, scored by name."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import build_image_folder
from helpers import tiny_cfg
from vl2v.data.dataset import load_domain_data
from vl2v.data.splits import novel_classes, novel_fold_count
from vl2v.errors import ConfigError
from vl2v.training.novel import novel_class_scores


def test_folds_rotate_over_every_class_and_are_fixed():
    for C, k in [(7, 3), (7, 2), (10, 3), (5, 1), (65, 10)]:
        folds = [novel_classes(C, k, f) for f in range(novel_fold_count(C, k))]
        assert all(len(f) == k == len(set(f)) for f in folds)
        assert set().union(*folds) == set(range(C))  # every class is held out at least once
        assert folds == [novel_classes(C, k, f) for f in range(novel_fold_count(C, k))]  # same on every call
    assert novel_classes(7, 3, 0) != novel_classes(7, 3, 1)


@pytest.mark.parametrize("C,k,fold,msg", [(7, 6, 0, "fewer than 2"), (7, 3, 3, "folds 0..2"), (7, 0, 0, "at least 1")])
def test_bad_folds(C, k, fold, msg):
    with pytest.raises(ValueError, match=msg):
        novel_classes(C, k, fold)


def test_holding_out_removes_the_classes_from_every_split(tmp_path):
    folder = build_image_folder(tmp_path / "d", classes=("cat", "dog", "horse", "owl"), per_class=5)
    data = load_domain_data(folder)
    held = data.holding_out([1, 3])
    assert held.classes == ["cat", "horse"] and held.all_classes == ["cat", "dog", "horse", "owl"]
    assert held.novel == [1, 3]
    recs = data.bank.records
    for d in range(3):
        for which in ("in", "out"):
            items = held.split_items(d, which)
            assert items and all(recs[i].label in (0, 2) for i in items)
            assert set(held.all_split_items(d, which)) == set(data.split_items(d, which))
    assert set(held.labels.tolist()) == {-1, 0, 1}
    assert held.labels[[i for i, r in enumerate(recs) if r.label == 2]].eq(1).all()
    assert held.with_seed(3).seen == held.seen  # another trial's splits hold out the same classes
    assert data.holding_out([]).seen is None


def test_scores_by_hand():
    # 4 images: two of seen class 0, one of seen class 1, one of novel class 2
    logits = torch.tensor([[5., 1., 0.], [1., 5., 9.], [1., 5., 0.], [0., 3., 2.]])
    labels = torch.tensor([0, 0, 1, 2])
    s = novel_class_scores(logits, labels, seen=[0, 1], novel=[2])
    assert s["seen_acc"] == pytest.approx(2 / 3)  # image 1 is called class 1 among the seen names
    assert s["novel_acc"] == 1.0  # one novel name: always right among the novel names
    assert s["gzsl_seen_acc"] == pytest.approx(2 / 3)  # image 1 -> class 2 (wrong), image 2 right
    assert s["gzsl_novel_acc"] == 0.0  # image 3 -> class 1 among every name
    assert s["hm"] == 0.0 and (s["n_seen"], s["n_novel"]) == (3, 1)


def test_config_checks_before_work(tmp_path):
    from vl2v.config import ExperimentConfig
    from vl2v.experiment.setup import check_experiment

    with pytest.raises(ConfigError, match="--novel-fold picks"):
        check_experiment(ExperimentConfig(novel_fold=1))
    with pytest.raises(ConfigError, match="fewer than 2 to train on"):
        check_experiment(ExperimentConfig(novel_classes=8))  # OfflinePACS has 9 classes
    with pytest.raises(ConfigError, match="folds 0..2"):
        check_experiment(ExperimentConfig(novel_classes=3, novel_fold=3))


@pytest.mark.e2e
def test_novel_class_runs_end_to_end(tmp_path):
    from vl2v.evaluation.report import build_report
    from vl2v.experiment.run import run_experiment

    folder = build_image_folder(tmp_path / "d", classes=("cat", "dog", "horse", "owl"), per_class=5)
    cfg = tiny_cfg(folder, tmp_path / "runs", ["zeroshot", "adip", "erm_lp"], targets=(0,), novel_classes=2,
                   novel_fold=1)
    result = run_experiment(cfg, log=lambda s: None)
    held = [["cat", "dog", "horse", "owl"][c] for c in novel_classes(4, 2, 1)]
    exp = json.loads((tmp_path / "runs" / "experiment.json").read_text())
    assert exp["held_out_classes"] == held
    by = {f["algorithm"]: f for f in result["finals"]}
    data = load_domain_data(folder)
    is_held = [data.classes[r.label] in held for r in data.bank.records]
    target_in = data.split_items(0, "in")
    n_novel = sum(is_held[i] for i in target_in)
    source_seen = [i for d in (1, 2) for i in data.split_items(d, "in") if not is_held[i]]
    for algo in ("zeroshot", "adip"):
        nv = by[algo]["novel"]
        assert nv["held_out"] == held and nv["fold"] == 1 and nv["checkpoint"] == "selected"
        assert (nv["n_seen"], nv["n_novel"]) == (len(target_in) - n_novel, n_novel) and n_novel > 0
        assert 0.0 <= nv["novel_acc"] <= 1.0 and nv["hm"] is not None
        # the seen score is the protocol's own OOD number (the target's seen images among the seen names)
        assert nv["seen_acc"] == pytest.approx(by[algo]["selected"]["ood_acc"])
        cfg_run = json.loads((tmp_path / "runs" / algo / "target-0-art" / "seed0" / "config.json").read_text())
        assert cfg_run["classes"] == [c for c in ["cat", "dog", "horse", "owl"] if c not in held]
        assert cfg_run["args"]["novel_classes"]["held_out"] == held
    assert by["erm_lp"]["novel"]["text_head"] is False and "novel_acc" not in by["erm_lp"]["novel"]
    # a held-out image is never trained on: the adip run's training images are the seen classes' only
    assert by["adip"]["n_train_images"] == len(source_seen)
    text = build_report([str(tmp_path / "runs")])
    from vl2v.evaluation.html_report import write_html_report
    from vl2v.evaluation.report import report_data

    html = write_html_report([str(tmp_path / "runs")], tmp_path / "r.html").read_text()
    assert "classes never seen in training" in html and "held out: fold 1" in html
    data = report_data([str(tmp_path / "runs")])["datasets"][0]
    assert "2 classes held out" in data["dataset"]
    nv = data["novel_classes"]["tables"]["novel_novel"]
    assert {r["algorithm"] for r in nv["rows"]} == {"zeroshot", "adip"}
    assert nv["rows"][0]["targets"]["art"]["mean"] == pytest.approx(100 * by[nv["rows"][0]["algorithm"]]["novel"]["novel_acc"])
    assert "Novel classes" in text and "harmonic mean" in text
    assert result["text"].count("**Novel classes (%)") == 1 and "held out: fold 1: " + ", ".join(held) in result["text"]


@pytest.mark.e2e
def test_a_run_without_held_out_classes_records_nothing_new(tmp_path):
    from vl2v.experiment.run import run_experiment

    folder = build_image_folder(tmp_path / "d")
    result = run_experiment(tiny_cfg(folder, tmp_path / "runs", ["zeroshot"], targets=(0,)), log=lambda s: None)
    assert "novel" not in result["finals"][0]
    run = json.loads((tmp_path / "runs" / "zeroshot" / "target-0-art" / "seed0" / "config.json").read_text())
    assert "novel_classes" not in run["args"]
