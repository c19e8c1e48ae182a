"""Random hyperparameter search (DomainBed's hparams_seed): search spaces, draws, runs, sweeps and the report's pick."""

import json

import numpy as np
import pytest
import torch

from vl2v.config import ExperimentConfig, Schedule, TrainConfig
from vl2v.errors import ConfigError
from vl2v.evaluation.report import build_report
from vl2v.experiment.run import run_experiment
from vl2v.experiment.setup import AlgoSpec
from vl2v.methods import list_algorithms, make_hparams
from vl2v.methods.search import LAMBDA_GRID, Choice, LogUniform, Scaled, Uniform, random_hparams, search_space
from vl2v.runs import RunDir, RunRecorder, collect_runs, run_name, select_hparams, select_record, summarize
from vl2v.training.spec import RunSpec
from vl2v.utils.io import atomic_write_json, atomic_write_text

ALGOS = [a.name for a in list_algorithms()]


def test_a_draw_is_reproducible_from_its_seed_and_differs_across_seeds():
    a = random_hparams("adip", 1)
    np.random.seed(123)
    torch.manual_seed(5)
    np.random.rand(10)
    assert random_hparams("adip", 1) == a  # independent of the global RNG state
    assert set(a) == {"lam", "align_lr", "distill_lr"}
    assert random_hparams("adip", 2) != a
    assert len({tuple(sorted(random_hparams("kd", s).items())) for s in range(1, 11)}) == 10
    assert random_hparams("kd", 3, dataset="PACS") == random_hparams("kd", 3)


def test_hparams_seed_zero_is_the_defaults():
    for name in ALGOS:
        assert random_hparams(name, 0) == {}
    assert AlgoSpec.parse("adip").drawn(0) == ()
    assert RunSpec("adip", 0, hparams=AlgoSpec.parse("adip").hparams).options() == {}
    assert run_name("adip", (), 0, ["a", "b"], 0) == run_name("adip", (), 0, ["a", "b"], 0, hparams_seed=0) \
        == "adip/target-0-a/seed0"
    assert run_name("adip", (("lam", "0.25"),), 1, ["a", "b"], 2, 3) == "adip_lam0.25_hp3/target-1-b/seed2"


@pytest.mark.parametrize("name", ALGOS)
def test_every_draw_validates_against_the_hyperparameter_ranges(name):
    cls = [a for a in list_algorithms() if a.name == name][0].hparams_cls
    space = search_space(name)
    assert not [k for k in space if "steps" in k]  # budgets are never searched
    for sched in (Schedule(), Schedule(lr=2e-4, frozen_lr=1e-3)):
        for seed in range(20):
            d = random_hparams(name, seed, schedule=sched)
            hp = make_hparams(cls, d, name)  # raises ConfigError if out of range
            for k, v in d.items():
                assert getattr(hp, k) == pytest.approx(v)


def test_distributions_stay_in_their_ranges():
    rng = np.random.RandomState(0)
    assert all(0.1 <= Uniform(0.1, 0.9).sample(rng) <= 0.9 for _ in range(200))
    xs = [LogUniform(1e-5, 1e-3).sample(rng) for _ in range(500)]
    assert min(xs) >= 1e-5 and max(xs) <= 1e-3 and min(xs) < 1e-4 < max(xs)
    assert {Choice([1, 2, 4, 8]).sample(rng) for _ in range(200)} == {1, 2, 4, 8}
    lr = Scaled("lr", LogUniform(0.2, 5.0))
    assert all(1e-5 - 1e-12 <= lr.sample(rng, Schedule(lr=5e-5)) <= 2.5e-4 + 1e-12 for _ in range(100))
    for k in range(1, 8):  # lrs follow the run's schedule: the same multiplier, whatever the profile
        fast, paper = random_hparams("kd", k, schedule=Schedule(lr=2e-4))["lr"], random_hparams("kd", k)["lr"]
        assert fast / paper == pytest.approx(4.0, rel=2e-3)


def test_explicit_options_win_over_the_draw():
    spec = AlgoSpec.parse("adip:lam=0.25")
    drawn = dict(spec.drawn(4))
    assert "lam" not in drawn and set(drawn) == {"align_lr", "distill_lr"}
    run = RunSpec("adip", 0, hparams_seed=4, hparams=spec.hparams, drawn=spec.drawn(4))
    opts = run.options()
    assert opts["lam"] == "0.25" and opts["align_lr"] == random_hparams("adip", 4)["align_lr"]
    assert make_hparams(list_algorithms()[0].hparams_cls, opts).lam == 0.25
    assert run.values.lam == 0.25 and run.values.align_lr == random_hparams("adip", 4)["align_lr"]
    with pytest.raises(ConfigError):
        AlgoSpec.parse("adip:lam=2")


# --------------------------------------------------------------------------- the report's pick
DOMAINS = ["art", "photo", "sketch"]


def _fake_run(out, algorithm, hparams, hp_seed, val, target=0, seed=0, drawn=()):
    rd = RunDir.for_spec(out, algorithm, hparams, target, DOMAINS, seed, hp_seed)
    args = {"dataset": "Tiny", "algorithm": algorithm, "test_envs": [target], "trial_seed": seed,
            "hparams_seed": hp_seed, "output_dir": str(rd.path)}
    rd.path.mkdir(parents=True)
    rr = RunRecorder(rd.path, args=args, hparams={})
    atomic_write_json(rd.config_json, {"spec": {"algorithm": algorithm, "target": target, "trial_seed": seed,
                                                "hparams_seed": hp_seed, "hparams": [list(h) for h in hparams],
                                                **({"drawn": [list(d) for d in drawn]} if drawn else {})},
                                       "args": args, "domains": DOMAINS, "classes": ["cat", "dog"]})
    rr.write(step=0, stage="ft", stage_step=0, loss=1.0,
             evals={**{f"env{i}_out_acc": 0.1 if i == target else val for i in range(3)}, f"env{target}_in_acc": val / 2},
             wall=1.0)
    atomic_write_json(rd.final_json, {"run_dir": str(rd.path), "algorithm": algorithm, "target": target,
                                      "target_name": DOMAINS[target], "trial_seed": seed,
                                      "selected": summarize(select_record(rr.records()))})
    atomic_write_text(rd.done, "done")


def test_selection_keeps_explicit_variants_apart_and_picks_the_best_validation(tmp_path):
    out = tmp_path / "runs"
    _fake_run(out, "adip", (), 0, 0.5)
    _fake_run(out, "adip", (), 1, 0.8, drawn=(("lam", 0.3),))
    _fake_run(out, "adip", (), 2, 0.6, drawn=(("lam", 0.7),))
    _fake_run(out, "adip", (), 1, 0.4, seed=1, drawn=(("lam", 0.3),))
    _fake_run(out, "adip", (), 0, 0.45, seed=1)
    _fake_run(out, "adip", (("lam", "0.25"),), 0, 0.9)  # an explicit variant: its own row, untouched
    _fake_run(out, "adip", (("lam", "0.25"),), 0, 0.7, target=1)
    kept, picks = select_hparams(collect_runs([out]))
    got = {(p.label, p.target, p.trial_seed): (p.hparams_seed, p.candidates, p.values) for p in picks}
    assert got == {("adip", 0, 0): (1, [0, 1, 2], {"lam": 0.3}), ("adip", 0, 1): (0, [0, 1], {})}
    assert sorted((e.summary["label"], e.hparams_seed, int(e.summary["trial_seed"])) for e in kept) == [
        ("adip", 0, 1), ("adip", 1, 0), ("adip (lam=0.25)", 0, 0), ("adip (lam=0.25)", 0, 0)]
    text = build_report([out])
    assert "7 runs" in text and "4 after choosing among hyperparameter draws" in text
    assert "| adip | art | 0 | 1 | 0 1 2 | 80.0 | lam=0.3 |" in text
    assert "| adip | art | 1 | 0 | 0 1 | 45.0 | defaults |" in text
    assert "| adip (n=2) | 31.2 ± 6.2 | - | - | - |" in text  # (n=2): rows differ in trials; OOD of the picks (0.8/2, 0.45/2), not of every draw; DomainBed SE


def test_no_search_no_pick_table(tmp_path):
    _fake_run(tmp_path / "r", "kd", (), 0, 0.5)
    _fake_run(tmp_path / "r", "kd", (), 0, 0.6, seed=1)
    assert select_hparams(collect_runs([tmp_path / "r"]))[1] == []
    text = build_report([tmp_path / "r"])
    assert "Chosen hyperparameters" not in text and "## Tiny: 2 runs, trial seeds [0, 1]\n" in text


# --------------------------------------------------------------------------- end to end
def _tiny(folder, out, hparams_seed):
    train = TrainConfig(schedule=Schedule(steps=4, frozen_steps=4, lr=1e-3, frozen_lr=1e-2), batch_size=4,
                        eval_every=2, image_size=32)
    return ExperimentConfig(dataset=None, data_dir=str(folder), out_dir=str(out), algorithms=("kd",),
                            teacher="tiny-test", store="memory", student="efficientnet_lite0", student_pretrained=False,
                            train=train, blackbox=True, targets=(0,), hparams_seed=hparams_seed)


def test_runs_of_two_hparams_seeds_record_their_draws_and_the_report_picks_one(image_folder, tmp_path):
    out = tmp_path / "runs"
    for h in (0, 1):
        run_experiment(_tiny(image_folder, out, h), log=lambda s: None)
    r0, r1 = RunDir(out / "kd" / "target-0-art" / "seed0"), RunDir(out / "kd_hp1" / "target-0-art" / "seed0")
    c0, c1 = r0.config(), r1.config()
    assert "drawn" not in c0["spec"] and c0["hparams"]["alpha"] == 0.5 and c0["hparams"]["lr"] == 0.0
    draw = random_hparams("kd", 1, schedule=Schedule(steps=4, frozen_steps=4, lr=1e-3, frozen_lr=1e-2))
    assert dict(c1["spec"]["drawn"]) == draw and c1["spec"]["hparams_seed"] == 1
    for k, v in draw.items():  # the values the run actually used
        assert c1["hparams"][k] == pytest.approx(v)
    assert c1["hparams"] != c0["hparams"]
    assert [r["args"]["hparams_seed"] for r in r1.records()][:1] == [1]
    assert json.loads(r1.results_jsonl.read_text().splitlines()[0])["hparams"]["alpha"] == draw["alpha"]
    v0, v1 = r0.final()["selected"]["val_acc"], r1.final()["selected"]["val_acc"]
    best = 1 if v1 > v0 else 0
    text = build_report([out])
    values = ", ".join(f"{k}={v:.4g}" for k, v in sorted(draw.items())) if best else "defaults"
    assert f"| kd | art | 0 | {best} | 0 1 | {100 * max(v0, v1):.1f} | {values} |" in text
    ood = (r1 if best else r0).final()["selected"]["ood_acc"]
    assert f"| kd | {100 * ood:.1f} |" in text


# --------------------------------------------------------------------------- sweeps
def test_sweep_expands_one_job_per_hparams_seed(image_folder, tmp_path, capsys):
    from vl2v.cli import main
    from vl2v.cli.sweep import job_configurator
    from vl2v.experiment.sweep import expand

    train = ["--no-pretrained", "--steps", "3", "--batch-size", "4", "--image-size", "32"]
    conf = job_configurator(train)
    plain = expand([str(image_folder)], ["adip", "kd"], [0, 1], ["art"], None, conf)
    jobs = expand([str(image_folder)], ["adip", "kd"], [0, 1], ["art"], None, conf, hparams_seeds=[0, 1, 2, 3])
    assert len(plain) == 4 and len(jobs) == 4 * 4
    assert sorted({j.config.hparams_seed for j in jobs}) == [0, 1, 2, 3] == sorted({j.meta["hparams_seed"] for j in jobs})
    assert len({j.id for j in jobs}) == 16
    assert {j.id for j in plain} == {j.id for j in jobs if j.config.hparams_seed == 0}  # no search: ids unchanged
    again = expand([str(image_folder)], ["adip", "kd"], [0, 1], ["art"], None, conf, hparams_seeds=[0, 1, 2, 3])
    assert [j.id for j in jobs] == [j.id for j in again]
    assert main(["sweep", "--out", str(tmp_path / "s"), "--datasets", str(image_folder), "--algorithms", "kd",
                 "--targets", "art", "--hparams-seeds", "0", "1", "2", "--dry-run", "--", *train]) == 0
    out = capsys.readouterr().out
    assert "3 jobs" in out and "hparams seed 2" in out
    assert main(["sweep", "--out", str(tmp_path / "s"), "--datasets", str(image_folder), "--algorithms", "kd",
                 "--dry-run", "--", *train, "--hparams-seed", "2"]) == 2
    assert "--hparams-seed is set by the sweep itself" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["adip", "sd"])
def test_the_lambda_search_reaches_both_ends(name):
    # a search must be able to pick lam = 0 (text term alone) and lam = 1 (image term alone)
    assert search_space(name)["lam"] == Choice(LAMBDA_GRID) and {0.0, 1.0} <= set(LAMBDA_GRID)
    drawn = {random_hparams(name, s)["lam"] for s in range(1, 60)}
    assert drawn == set(LAMBDA_GRID)


def test_the_rise_search_reaches_the_authors_cross_entropy_heavy_weights():
    space = search_space("rise")
    # the RISE authors' TerraIncognita grid: w1 (KL) 0.2-0.3, w2 (CE) 0.7-0.8; PACS: 0.8-0.9 / 0.1-0.2
    assert space["w1"].lo <= 0.2 and space["w1"].hi >= 0.9 and space["w2"].lo <= 0.1 and space["w2"].hi >= 0.8
    draws = [random_hparams("rise", s) for s in range(1, 40)]
    assert any(d["w2"] > d["w1"] for d in draws) and any(d["w1"] > d["w2"] for d in draws)
