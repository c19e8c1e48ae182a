"""Runs trained side by side (``--jobs N``): the same numbers and the same teacher bill as one process."""

import json
from pathlib import Path

import pytest
import torch

from vl2v.cli import main
from vl2v.errors import ConfigError
from vl2v.experiment import parallel
from vl2v.experiment.parallel import plugin_modules, resolve_jobs

ALGOS = ["zeroshot", "erm_ft", "kd", "adip"]


def _argv(folder, out, jobs, store):
    return ["compare", "--data", str(folder), "--algorithm", *ALGOS, "--teacher", "tiny-test", "--store", str(store),
            "--no-pretrained", "--steps", "4", "--frozen-steps", "3", "--batch-size", "4", "--image-size", "32",
            "--eval-every", "2", "--views", "2", "--target", "0", "1", "--jobs", str(jobs), "--threads", "1",
            "--out", str(out)]


def _runs(out: Path) -> dict[str, dict]:
    got = {}
    for f in sorted(out.rglob("final.json")):
        rel = str(f.parent.relative_to(out))
        recs = [json.loads(x) for x in (f.parent / "results.jsonl").read_text().splitlines()]
        got[rel] = {"final": json.loads(f.read_text()), "records": recs,
                    "config": json.loads((f.parent / "config.json").read_text())}
    return got


def _clean(d: dict) -> dict:
    return {k: v for k, v in d.items() if "dir" not in k and "time" not in k}


def _strip(rec: dict) -> dict:
    """A record less what differs between any two runs of the same thing: times and folders."""
    out = {k: v for k, v in rec.items() if k not in ("time", "wall_time", "teacher_seconds")}
    out["args"] = {k: v for k, v in rec["args"].items() if k not in ("output_dir", "data_dir")}
    return out


def test_two_processes_give_the_numbers_and_bill_of_one(image_folder, tmp_path, capsys):
    """8 runs (4 algorithms x 2 targets) on 2 worker processes vs in this process, one thread each: identical
    records, selections and stream digests, and every run records the teacher queries it records in one process
    (the parent pays in the runs' order) -- each training view paid once in all."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_argv(image_folder, one, 1, tmp_path / "one.sqlite")) == 0
    assert main(_argv(image_folder, two, 2, tmp_path / "two.sqlite")) == 0
    assert "in 2 processes x 1 thread(s)" in capsys.readouterr().out
    a, b = _runs(one), _runs(two)
    assert len(a) == 8 and a.keys() == b.keys()
    for run in a:
        fa, fb = a[run]["final"], b[run]["final"]
        assert _clean(fa["selected"]) == _clean(fb["selected"]), run
        assert fa.get("data_stream") == fb.get("data_stream"), run
        qa = {k: v for k, v in fa["queries"].items() if k != "seconds"}
        qb = {k: v for k, v in fb["queries"].items() if k != "seconds"}
        assert qa == qb, run
        assert [_strip(r) for r in a[run]["records"]] == [_strip(r) for r in b[run]["records"]], run
        assert b[run]["config"]["args"]["threads"] == 1
    paid = sum(r["final"]["queries"]["image_queries"] for r in b.values())
    assert paid == sum(r["final"]["queries"]["image_queries"] for r in a.values()) > 0
    # the table is the same too, and says how the runs were trained
    ta, tb = (one / "results.md").read_text(), (two / "results.md").read_text()
    assert ta.split("|", 1)[1] == tb.split("|", 1)[1]


def test_workers_import_the_modules_that_registered_plugins():
    # the suite's stand-in teacher is registered by conftest: a spawned worker must import it to resolve it
    assert "conftest" in plugin_modules()
    assert not [m for m in plugin_modules() if m.startswith("vl2v")]


def test_auto_jobs(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 4)
    monkeypatch.setattr(parallel, "_available_memory", lambda: 64 << 30)
    assert resolve_jobs(None, None, "cpu", 24, False) == (4, 1)
    assert resolve_jobs(None, None, "cpu", 3, False) == (3, 1)  # no more workers than runs
    assert resolve_jobs(None, None, "cpu", 24, False, shared_store=False)[0] == 1
    assert resolve_jobs(None, None, "cuda", 24, False)[0] == 1
    assert resolve_jobs(None, None, "cpu", 24, True)[0] == 1  # torchrun
    assert resolve_jobs(2, None, "cpu", 24, False) == (2, 2)  # the cores shared out
    assert resolve_jobs(2, 3, "cpu", 24, False) == (2, 3)
    monkeypatch.setattr(parallel, "_available_memory", lambda: 7 << 30)
    assert resolve_jobs(None, None, "cpu", 24, False)[0] == 2  # as many as memory allows


@pytest.mark.parametrize("jobs,kw,match", [
    (2, {"device": "cuda"}, "one cuda device"),
    (2, {"distributed": True}, "torchrun"),
    (2, {"shared_store": False}, "store memory"),
])
def test_parallel_runs_refused_where_they_cannot_work(jobs, kw, match):
    args = {"device": "cpu", "distributed": False, **kw}
    with pytest.raises(ConfigError, match=match):
        resolve_jobs(jobs, None, args.pop("device"), 8, args.pop("distributed"), **args)


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_bad_jobs_flag_is_refused(bad, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--jobs", bad])
    assert e.value.code == 2
    assert "--jobs" in capsys.readouterr().err


def test_a_run_does_not_depend_on_the_runs_before_it_in_the_process(image_folder, tmp_path):
    """Cached student features are computed in fixed blocks of the dataset, so target 1's runs give the same
    records whether target 0's runs filled the caches first (one process, or a worker that trained them) or not."""
    from vl2v.config import ExperimentConfig, Schedule, TrainConfig
    from vl2v.experiment.run import run_experiment

    def cfg(out, targets):
        train = TrainConfig(schedule=Schedule(steps=6, frozen_steps=4, lr=1e-3, frozen_lr=1e-2, freeze_stages=2),
                            batch_size=4, eval_every=2, image_size=32)
        return ExperimentConfig(dataset=None, data_dir=str(image_folder), out_dir=str(out), algorithms=("erm_ft", "adip"),
                                teacher="tiny-test", store=str(tmp_path / "s.sqlite"), student="efficientnet_lite0",
                                student_pretrained=False, views=3, targets=targets, train=train)

    run_experiment(cfg(tmp_path / "both", (0, 1)), log=lambda s: None)
    run_experiment(cfg(tmp_path / "alone", (1,)), log=lambda s: None)
    a, b = _runs(tmp_path / "both"), _runs(tmp_path / "alone")
    assert len(b) == 2
    def numbers(rec):  # the second experiment reads the first one's teacher store: no queries to compare
        return {k: v for k, v in _strip(rec).items() if not k.startswith("teacher_")}

    for run in b:
        ra, rb = a[run]["records"], b[run]["records"]
        assert len(ra) == len(rb) > 2
        for x, y in zip(ra, rb):
            diff = {k for k in numbers(x) if numbers(x)[k] != numbers(y).get(k)}
            assert not diff, (run, x["step"], sorted(diff))


def test_student_caches_warmed_in_one_process_serve_another(image_folder, tmp_path):
    """What the parent computes (warm_student_caches) and saves is what a worker loads: the run then finds every
    student feature it asks for in the cache, and its result equals a run that computed them itself."""
    from dataclasses import replace

    from vl2v.config import ExperimentConfig, Schedule, TrainConfig
    from vl2v.experiment.plan import make_plan
    from vl2v.experiment.run import run_experiment
    from vl2v.experiment.setup import check_experiment, prepare, trainer_for

    train = TrainConfig(schedule=Schedule(steps=4, frozen_steps=3, lr=1e-3, frozen_lr=1e-2, freeze_stages=2),
                        batch_size=4, eval_every=2, image_size=32)
    cfg = ExperimentConfig(dataset=None, data_dir=str(image_folder), out_dir=str(tmp_path / "ref"), algorithms=("erm_ft",),
                           teacher="tiny-test", store=str(tmp_path / "s.sqlite"), student="efficientnet_lite0",
                           student_pretrained=False, views=2, targets=(0,), train=train)
    ref = run_experiment(cfg, log=lambda s: None)["finals"][0]

    def experiment(out):
        c = replace(cfg, out_dir=str(tmp_path / out))
        return prepare(c, check_experiment(c), lambda s: None)

    parent = experiment("parent")
    (run,) = make_plan(parent.cfg, parent).runs
    trainer_for(parent, run, {}).warm_student_caches()
    kinds = {k[3:] for k, v in parent.res._features.items() if v}
    assert kinds == {("train", "prefix", 2), ("eval", "prefix", 2)}  # no head warm-up here: prefixes only
    parent.res.save_features(tmp_path / "f.safetensors")

    worker = experiment("got")
    worker.res.load_features(tmp_path / "f.safetensors")
    for key, cache in parent.res._features.items():
        assert cache.keys() == worker.res._features[key].keys()
        assert all(torch.equal(cache[i], worker.res._features[key][i]) for i in cache)
    real, asked = worker.res.frozen_features, []

    def only_cached(student, indices, kind, key, prefix=None):
        cache = worker.res._features.get(key + (kind,) + (("prefix", prefix) if prefix else ()), {})
        asked.append(kind)
        assert all(i in cache for i in indices), f"{kind} prefix={prefix}: computed again"
        return real(student, indices, kind, key, prefix)

    worker.res.frozen_features = only_cached
    got = trainer_for(worker, run, {}).run().final
    assert {"train", "eval"} <= set(asked)
    assert _clean(got["selected"]) == _clean(ref["selected"])

