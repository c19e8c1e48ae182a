"""`--profile paper`: the authors' protocol (SWAD headline, original resolution, stage-1 threshold, paper models)."""

from __future__ import annotations

import json

import pytest

from vl2v.cli import main
from vl2v.cli.train import config_from_args, train_parser
from vl2v.config import ExperimentConfig, apply_profile, profile_values, validated, with_settings
from vl2v.errors import ConfigError


def test_apply_profile_paper_sets_the_authors_protocol():
    cfg = apply_profile(ExperimentConfig(), "paper")
    assert cfg.train.swad is True
    assert cfg.max_side is None  # `max_side = 0` in the TOML: no pre-crop shrink
    assert cfg.train.stage_select_min_step == 1000
    assert cfg.student == "vit_base_patch16_224" and cfg.teacher == "openclip:ViT-B-16:openai"
    assert cfg.train.image_size == 224 and cfg.train.teacher_mode == "online"


def test_fast_profile_keeps_todays_defaults():
    cfg = apply_profile(ExperimentConfig(), "fast")
    assert cfg.train.swad is False and cfg.max_side == 256 and cfg.train.stage_select_min_step == 0
    assert cfg.student == "efficientnet_lite0" and cfg.teacher == "conse"
    assert not {"swad", "max_side", "student", "teacher", "stage_select_min_step"} & set(profile_values("fast"))


def test_explicit_flags_win_over_the_paper_profile():
    p = train_parser()
    cfg = config_from_args(p.parse_args(["--profile", "paper", "--student", "efficientnet_lite0", "--teacher", "conse",
                                         "--max-side", "128", "--no-swad", "--stage-select-min-step", "0"]))
    assert (cfg.student, cfg.teacher, cfg.max_side, cfg.train.swad, cfg.train.stage_select_min_step) == \
        ("efficientnet_lite0", "conse", 128, False, 0)
    cfg = config_from_args(p.parse_args(["--max-side", "none"]))
    assert cfg.max_side is None and cfg.student == "efficientnet_lite0" and cfg.teacher == "conse"


def test_max_side_zero_means_none_and_negative_is_refused():
    assert with_settings(ExperimentConfig(), {"max_side": 0}).max_side is None
    with pytest.raises(ConfigError):
        validated(ExperimentConfig, {"max_side": 0})  # the typed API says None
    with pytest.raises(ConfigError):
        with_settings(ExperimentConfig(), {"stage_select_min_step": -1})


def test_paper_profile_runs_end_to_end(image_folder, tmp_path, capsys):
    out = tmp_path / "paper"
    rc = main(["train", "--profile", "paper", "--data", str(image_folder), "--student", "timm:resnet10t",
               "--no-pretrained", "--teacher", "tiny-test", "--store", "memory", "--steps", "5", "--frozen-steps", "3",
               "--eval-every", "2", "--batch-size", "4", "--image-size", "32", "--target", "0",
               "--teacher-mode", "cached", "--lr", "0", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    exp = json.loads((out / "experiment.json").read_text())["config"]
    assert exp["train"]["swad"] is True and exp["max_side"] is None and exp["train"]["stage_select_min_step"] == 1000
    run = next(out.glob("adip/target-0-*/seed0"))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["swad"] is True and cfg["train"]["stage_select_min_step"] == 1000
    final = json.loads((run / "final.json").read_text())
    # lr 0 in Distill: a flat validation loss, so SWAD finds its valley at once and averages every segment
    assert "ood_acc" in final["swad"]
    # Align (3 steps, evaluated at stage steps 0 and 2) may hand over only its last checkpoint: step 0 < 1000
    assert final["stage_selected"]["align"]["stage_step"] == 2
    results = (out / "results.md").read_text()
    assert results in text
    first = next(line for line in results.splitlines() if line.startswith("**"))
    assert first.startswith("**SWAD (headline)")
    assert results.index("**SWAD (headline)") < results.index("**Selected checkpoint:")
