"""The experiment is resolved once: make_plan merges and validates each algorithm's hyperparameters (defaults <-
drawn <- explicit) once, lists every run as a RunSpec carrying them, and nothing downstream (the trainer, the
algorithm's creation) merges or validates them again."""

from __future__ import annotations

import pytest

from helpers import tiny_cfg
from vl2v.errors import ConfigError
from vl2v.experiment import plan as plan_module
from vl2v.experiment.plan import make_plan, resolve_targets
from vl2v.experiment.run import run_experiment
from vl2v.experiment.setup import check_experiment, prepare
from vl2v.methods import registry as algo_registry
from vl2v.methods.search import random_hparams


def test_the_plan_lists_every_run_with_its_final_hyperparameters(image_folder, tmp_path):
    cfg = tiny_cfg(image_folder, tmp_path / "p", ["adip:lam=0.25", "erm_lp"], targets=(0, 2), seeds=(0, 1),
                   hparams_seed=3)
    exp = prepare(cfg, check_experiment(cfg), lambda s: None)
    plan = make_plan(exp.cfg, exp)
    # trial seed, then target, then algorithm: the order runs are trained and reported in
    assert [(r.trial_seed, r.target, r.label) for r in plan.runs] == [
        (s, t, a) for s in (0, 1) for t in (0, 2) for a in ("adip (lam=0.25)", "erm_lp")]
    adip = plan.runs[0]
    drawn = random_hparams("adip", 3, exp.dataset_name, exp.cfg.train.schedule)  # lrs follow the run's schedule
    assert adip.values.lam == 0.25  # the explicit option wins over the draw
    assert adip.values.align_lr == pytest.approx(drawn["align_lr"]) and "lam" not in dict(adip.drawn)
    assert all(r.values is plan.runs[0].values for r in plan.runs if r.algorithm == "adip")  # resolved once


def test_hyperparameters_are_validated_once_per_algorithm_not_per_run(image_folder, tmp_path, monkeypatch):
    calls = {"plan": 0}
    real = plan_module.resolve_hparams

    def counted(*a, **k):
        calls["plan"] += 1
        return real(*a, **k)

    monkeypatch.setattr(plan_module, "resolve_hparams", counted)
    # the trainer hands the plan's values to create_algorithm: it must not make them again
    monkeypatch.setattr(algo_registry, "make_hparams",
                        lambda *a, **k: pytest.fail("hyperparameters validated again after the plan"))
    cfg = tiny_cfg(image_folder, tmp_path / "r", ["erm_lp"], targets=(0, 1, 2))
    out = run_experiment(cfg, log=lambda s: None)
    assert len(out["finals"]) == 3 and calls["plan"] == 1


def test_target_names_resolve_in_one_place():
    domains = ["art", "photo", "sketch"]
    assert resolve_targets(["photo", "0"], domains) == (1, 0)
    assert resolve_targets(None, domains) is None
    with pytest.raises(ConfigError, match="target 7 out of range: domains are 0=art, 1=photo, 2=sketch"):
        resolve_targets(["7"], domains)
    with pytest.raises(ConfigError, match="unknown target domain 'mars'"):
        resolve_targets(["mars"], domains)
