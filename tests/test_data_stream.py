"""One data stream for every algorithm of a comparison (the fair-comparison issue, point 1).

Every algorithm trains on the same views drawn the same way: with the stored stream each replays
the same K stored views (ERM included, no private fresh augmentation); with the fresh stream each
draws the same fresh augmentations (the teacher queried online on the same crop). The stream is
seeded by (trial seed, target, stage role) only, so ERM-FT's, KD's, RISE's fine-tuning and
ADiP's Distill get the same minibatches, and LP-FT's probe and ADiP's Align too; each run records
the stream (config.json) and a digest of what every stage trained on (final.json).
"""

import json
from pathlib import Path

import pytest
import torch

from vl2v.config import ExperimentConfig, Schedule, TrainConfig
from vl2v.data.images import load_rgb
from vl2v.data.transforms import IDENTITY, render_view_u8, teacher_view_u8, training_views
from vl2v.errors import ConfigError
from vl2v.experiment.run import run_experiment
from vl2v.methods.base import Algorithm

TUNED = ["erm_ft", "kd", "rise", "adip", "lp_ft"]


def cfg_for(folder, out, algorithms, *, views=2, stream="auto", teacher_mode="cached"):
    train = TrainConfig(schedule=Schedule(steps=4, frozen_steps=3, lr=1e-3, frozen_lr=1e-2), batch_size=4,
                        eval_every=2, image_size=32, teacher_mode=teacher_mode, data_stream=stream)
    return ExperimentConfig(dataset=None, data_dir=str(folder), out_dir=str(out), algorithms=tuple(algorithms),
                            teacher="tiny-test", store="memory", student="efficientnet_lite0", student_pretrained=False,
                            views=views, targets=(0,), train=train)


def _runs(out: Path) -> dict[str, tuple[dict, dict]]:
    got = {}
    for f in sorted(out.rglob("final.json")):
        final = json.loads(f.read_text())
        got[final["algorithm"]] = (final, json.loads((f.parent / "config.json").read_text()))
    return got


def _spy_inputs(monkeypatch) -> dict[tuple[str, str], list[torch.Tensor]]:
    """The student's training inputs of every (algorithm, stage) step, as the algorithms receive them."""
    seen: dict[tuple[str, str], list[torch.Tensor]] = {}
    real_update = Algorithm.update

    def spy(self, minibatches, model=None, **kw):
        x = torch.cat([b.x if b.x is not None else b.hidden if b.hidden is not None else b.feats for b in minibatches])
        seen.setdefault((type(self).__name__, self.stage.name), []).append(x.detach().clone())
        return real_update(self, minibatches, model, **kw)

    monkeypatch.setattr(Algorithm, "update", spy)
    return seen


def test_every_algorithm_trains_on_the_same_stored_views(image_folder, tmp_path, monkeypatch):
    seen = _spy_inputs(monkeypatch)
    out = tmp_path / "runs"
    text = run_experiment(cfg_for(image_folder, out, TUNED), log=lambda s: None)["text"]
    runs = _runs(out)
    assert set(runs) == set(TUNED)
    # the printed tables say what every algorithm trained on, checked from the runs' digests
    assert ("data stream (the same for every algorithm): stored views, K=2 per image" in text
            and "fine-tuning stages: identical (image, view) sequences in every algorithm" in text
            and "frozen-backbone stages: identical (image, view) sequences in every algorithm" in text), text
    for name, (final, config) in runs.items():
        assert config["data_stream"]["kind"] == "stored" and config["data_stream"]["views"] == 2, name
        assert config["hparams"]["data_stream"] == "stored"
        assert final["data_stream"]["kind"] == "stored"
    tune = {n: f["data_stream"]["stages"] for n, (f, _) in runs.items()}
    digests = {n: [s["digest"] for s in st.values() if s["role"] == "tune"] for n, st in tune.items()}
    assert all(len(d) == 1 and d[0] for d in digests.values()), digests
    # ERM-FT, KD, RISE, ADiP's Distill and LP-FT's fine-tuning: one stream
    assert len({d[0] for d in digests.values()}) == 1, digests
    frozen = {n: [s["digest"] for s in st.values() if s["role"] == "frozen"] for n, st in tune.items()}
    assert frozen["adip"] == frozen["lp_ft"] and frozen["adip"][0]  # Align and the probe: one stream too
    assert tune["adip"]["distill"]["steps"] == 4 and tune["adip"]["align"]["steps"] == 3
    # ... and the pixels are the same: ERM-FT's first fine-tuning batch is exactly ADiP's first Distill batch
    erm, adip = seen[("ERMFineTune", "ft")], seen[("ADiP", "distill")]
    assert len(erm) == len(adip) == 4
    assert all(torch.equal(a, b) for a, b in zip(erm, adip))


def test_fresh_stream_is_shared_too_and_the_teacher_sees_the_same_crop(image_folder, tmp_path, monkeypatch):
    seen = _spy_inputs(monkeypatch)
    out = tmp_path / "runs"
    run_experiment(cfg_for(image_folder, out, ["erm_ft", "adip"], views=0, teacher_mode="online"), log=lambda s: None)
    runs = _runs(out)
    assert {n: c["data_stream"]["kind"] for n, (_, c) in runs.items()} == {"erm_ft": "fresh", "adip": "fresh"}
    d_erm = [s["digest"] for s in runs["erm_ft"][0]["data_stream"]["stages"].values()]
    assert d_erm == [runs["adip"][0]["data_stream"]["stages"]["distill"]["digest"]]
    erm = seen[("ERMFineTune", "ft")]
    assert len(erm) == 4 and all(torch.equal(a, b) for a, b in zip(erm, seen[("ADiP", "distill")]))


def test_a_fresh_stream_with_a_cached_teacher_is_refused_for_teacher_methods(image_folder, tmp_path):
    with pytest.raises(ConfigError, match="--teacher-mode online"):
        run_experiment(cfg_for(image_folder, tmp_path / "r", ["adip"], stream="fresh"), log=lambda s: None)
    with pytest.raises(ConfigError, match="--data-stream stored replays stored views"):
        run_experiment(cfg_for(image_folder, tmp_path / "r", ["adip"], stream="stored", teacher_mode="online"),
                       log=lambda s: None)
    # ERM alone has no teacher to query: a fresh stream is fine (each step a new augmentation)
    run_experiment(cfg_for(image_folder, tmp_path / "e", ["erm_ft"], stream="fresh"), log=lambda s: None)
    (final, config), = _runs(tmp_path / "e").values()
    assert config["data_stream"]["kind"] == "fresh" and config["data_stream"]["views"] is None


def test_without_augmentation_teacher_and_student_see_the_whole_image(image_folder):
    """K = 0: one identity view, the same pixels for student and teacher (not the teacher's centre crop)."""
    import numpy as np

    pil = load_rgb(next(Path(image_folder).rglob("*.png")))
    img = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
    wide = torch.cat([img, img.flip(-1)], dim=2)  # a 2:1 image: a centre crop would cut half of it away
    assert training_views("abc", 0) == [IDENTITY]
    assert len(training_views("abc", 3)) == 3 and IDENTITY not in training_views("abc", 3)
    s, t = render_view_u8(wide, IDENTITY, 24), teacher_view_u8(wide, IDENTITY, 24)
    assert torch.equal(s, t)
    assert not torch.equal(t, teacher_view_u8(wide, None, 24))  # the teacher's own eval view crops
    # the identity view changes no colour: a square image comes back as its plain resize
    sq = render_view_u8(img, IDENTITY, img.shape[-1])
    assert torch.equal(sq, img)


def test_head_warmup_gives_every_fine_tuning_algorithm_the_same_frozen_stage(image_folder, tmp_path, monkeypatch):
    """--head-warmup (fast profile): KD, RISE and ERM-FT first train their new heads on the frozen backbone for
    frozen_steps, on the same stream as ADiP's Align; selection then picks from the final stage only."""
    from dataclasses import replace

    trainable: dict[tuple[str, str], bool] = {}
    real_begin = Algorithm.begin_stage

    def spy(self, stage):
        real_begin(self, stage)
        trainable[(type(self).__name__, stage.name)] = any(p.requires_grad for p in self.student.parameters())

    monkeypatch.setattr(Algorithm, "begin_stage", spy)
    cfg = cfg_for(image_folder, tmp_path / "runs", ["erm_ft", "kd", "rise", "adip"])
    cfg = replace(cfg, train=replace(cfg.train, schedule=replace(cfg.train.schedule, head_warmup=True)))
    run_experiment(cfg, log=lambda s: None)
    runs = _runs(tmp_path / "runs")
    stages = {n: [(k, v["role"], v["steps"]) for k, v in f["data_stream"]["stages"].items()] for n, (f, _) in runs.items()}
    assert {n: sorted(v) for n, v in stages.items()} == {"erm_ft": [("ft", "tune", 4), ("lp", "frozen", 3)],
                                                          "kd": [("ft", "tune", 4), ("warmup", "frozen", 3)],
                                                          "rise": [("ft", "tune", 4), ("warmup", "frozen", 3)],
                                                          "adip": [("align", "frozen", 3), ("distill", "tune", 4)]}
    assert [s["name"] for s in runs["kd"][1]["stages"]] == ["warmup", "ft"]  # config.json: the stages in order
    for role in ("frozen", "tune"):
        assert len({s["digest"] for f, _ in runs.values() for s in f["data_stream"]["stages"].values()
                    if s["role"] == role}) == 1, role
    assert trainable == {("ERMFineTune", "lp"): False, ("ERMFineTune", "ft"): True, ("KD", "warmup"): False,
                         ("KD", "ft"): True, ("RISE", "warmup"): False, ("RISE", "ft"): True,
                         ("ADiP", "align"): False, ("ADiP", "distill"): True}
    for name, (final, config) in runs.items():  # the final stage's checkpoint is selected (the default)
        assert final["selected"]["stage"] == config["stages"][-1]["name"], name


def test_cli_flags_for_the_stream_and_the_warmup_override_the_profile():
    import argparse

    from vl2v.cli import train as cli_train

    parser = argparse.ArgumentParser()
    cli_train.register(parser.add_subparsers())

    def cfg(*argv):
        return cli_train.config_from_args(parser.parse_args(["train", *argv]))

    fast = cfg()
    assert (fast.views, fast.train.data_stream_kind, fast.train.schedule.head_warmup, fast.train.select_stage) == (
        4, "stored", True, "final")
    assert cfg("--no-head-warmup").train.schedule.head_warmup is False
    paper = cfg("--profile", "paper", "--student", "efficientnet_lite0", "--teacher", "conse")
    assert (paper.train.data_stream_kind, paper.train.schedule.head_warmup) == ("fresh", False)
    assert cfg("--profile", "paper", "--head-warmup", "--student", "efficientnet_lite0",
               "--teacher", "conse").train.schedule.head_warmup is True
    assert cfg("--data-stream", "fresh").train.data_stream_kind == "fresh"
