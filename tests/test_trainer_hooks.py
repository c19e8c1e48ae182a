"""The training loop's hooks fire once per step and once per recorded evaluation, change nothing by default,
and the loop state a checkpoint holds round-trips through LoopState."""

from __future__ import annotations

import json

import pytest

from helpers import tiny_cfg
from vl2v.training.hooks import EvalInfo, StepInfo, TrainerHooks
from vl2v.training.state import LoopState


class Recording(TrainerHooks):
    def __init__(self, stop_after: int | None = None, skip_frozen: bool = False) -> None:
        self.steps: list[StepInfo] = []
        self.evals: list[EvalInfo] = []
        self.stop_after, self.skip_frozen = stop_after, skip_frozen

    def run_stage(self, stage) -> bool:
        return not (self.skip_frozen and stage.backbone_frozen)

    def on_step(self, info: StepInfo) -> bool:
        self.steps.append(info)
        return self.stop_after is not None and info.step >= self.stop_after

    def on_eval(self, info: EvalInfo) -> None:
        self.evals.append(info)


def _run(folder, out, algorithm: str, hooks: TrainerHooks, swad: bool = False):
    """One run of ``algorithm`` (target 0, trial 0) through a Trainer given ``hooks``."""
    from vl2v.experiment.plan import make_plan
    from vl2v.experiment.setup import check_experiment, prepare, trainer_for

    cfg = tiny_cfg(folder, out, [algorithm], targets=(0,), swad=swad)
    exp = prepare(cfg, check_experiment(cfg), lambda s: None)
    (run,) = make_plan(exp.cfg, exp).runs
    tr = trainer_for(exp, run, {"teacher_identity": exp.teacher_identity})
    tr.hooks = hooks
    return tr, tr.run()


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.e2e
def test_hooks_fire_once_per_step_and_once_per_evaluation(image_folder, tmp_path):
    from vl2v.experiment.run import run_experiment

    hooks = Recording()
    tr, outcome = _run(image_folder, tmp_path / "hooked", "adip", hooks, swad=True)
    stages = json.loads((outcome.run_dir / "config.json").read_text())["stages"]
    assert [s["name"] for s in stages] == ["align", "distill"]
    # on_step: every step of every stage, in order, with its timings
    expected = [(st["name"], s) for st in stages for s in range(st["steps"])]
    assert [(i.stage.name, i.step) for i in hooks.steps] == expected
    assert [i.global_step for i in hooks.steps] == list(range(len(expected)))
    assert all(0.0 <= i.wait_s <= i.step_s for i in hooks.steps)
    assert all(isinstance(i.loss, float) for i in hooks.steps)
    records = _records(outcome.run_dir)
    assert [i.evaluated for i in hooks.steps].count(True) == len(records)
    # on_eval: every record of results.jsonl, then the SWAD model's evaluation (when SWAD averaged)
    averaged = "valley_start" in outcome.final["swad"]
    assert len(hooks.evals) == len(records) + averaged
    assert [(e.stage, e.step) for e in hooks.evals[:len(records)]] == [(r["stage"], r["step"]) for r in records]
    for e, r in zip(hooks.evals, records):
        assert e.metrics["val_acc"] == r["val_acc"] and e.seconds >= 0.0
    if averaged:
        assert hooks.evals[-1].stage == "swad"
        assert hooks.evals[-1].metrics["val_acc"] == outcome.final["swad"]["val_acc"]
    n_eval = sum(len(tr.task.data.split_items(d, w)) for d, w in tr.task.eval_sets())
    assert {e.images for e in hooks.evals} == {n_eval}
    # the default hooks change nothing: a run without them records the same numbers
    ref = run_experiment(tiny_cfg(image_folder, tmp_path / "plain", ["adip"], targets=(0,), swad=True),
                         log=lambda s: None)["finals"][0]
    assert ref["selected"] == outcome.final["selected"] and ref["swad"] == outcome.final["swad"]
    assert ref["data_stream"] == outcome.final["data_stream"]


@pytest.mark.e2e
def test_training_free_run_evaluates_once(image_folder, tmp_path):
    hooks = Recording()
    _, outcome = _run(image_folder, tmp_path / "zs", "zeroshot", hooks)
    assert hooks.steps == []
    assert [(e.stage, e.step) for e in hooks.evals] == [("none", 0)]
    assert len(_records(outcome.run_dir)) == 1


@pytest.mark.e2e
def test_hooks_can_skip_stages_and_end_them_early(image_folder, tmp_path):
    """What a benchmark timing fine-tuning steps does: no frozen stage, and the stage ends after step 1."""
    hooks = Recording(stop_after=1, skip_frozen=True)
    _, outcome = _run(image_folder, tmp_path / "short", "adip", hooks)
    assert [(i.stage.name, i.step) for i in hooks.steps] == [("distill", 0), ("distill", 1)]
    assert [r["stage"] for r in _records(outcome.run_dir)] == ["distill"]  # step 0's evaluation only
    assert (outcome.run_dir / "done").exists()


# --------------------------------------------------------------------------- LoopState
#: a checkpoint's "loop" entry as the loop wrote it before LoopState (a run in its second stage)
OLD_LOOP = {"global_step": 9, "stage_index": 1, "stage_step": 3, "best": {"step": 8, "val_acc": 0.5},
            "stage_best": {"step": 8, "stage_step": 2, "val_acc": 0.5}, "loss_sum": 1.25, "loss_n": 1,
            "elapsed": 3.5,
            "stream": {"align": {"role": "frozen", "seed": 11, "digest": "ab", "steps": 6},
                       "distill": {"role": "tune", "seed": 12, "digest": "cd", "steps": 3}},
            "stage_seconds": {"align": 1.5},
            "stage_selected": {"align": {"step": 4, "stage_step": 4, "val_acc": 0.25}}}


def test_loop_state_round_trips_the_checkpoint_dict():
    s = LoopState()
    s.load_state_dict(json.loads(json.dumps(OLD_LOOP)))
    assert (s.global_step, s.stage_index, s.stage_step, s.loss_n) == (9, 1, 3, 1)
    assert s.stream["distill"]["digest"] == "cd" and s.stage_selected["align"]["stage_step"] == 4
    out = s.state_dict()
    assert out == OLD_LOOP and list(out) == list(OLD_LOOP)  # the same dict, keys in the same order
    again = LoopState()
    again.load_state_dict(out)
    assert again == s
    out["stream"]["distill"]["steps"] = 99  # a copy: the state is not changed through it
    assert s.stream["distill"]["steps"] == 3


def test_loop_state_writes_optional_keys_only_once_set_and_keeps_unknown_ones():
    fresh = LoopState().state_dict()
    assert fresh == {"global_step": 0, "stage_index": 0, "stage_step": 0, "best": None, "stage_best": None,
                     "loss_sum": 0.0, "loss_n": 0, "elapsed": 0.0}  # the loop's initial dict, no stream yet
    s = LoopState()
    s.start_stream("ft", {"role": "tune", "seed": 1, "digest": "", "steps": 0})
    assert list(s.state_dict())[-1] == "stream"
    s.add_stage_seconds("ft", 1.0)
    s.add_stage_seconds("ft", 0.5)
    s.hand_over("ft")  # no best yet: nothing handed over
    assert s.state_dict()["stage_seconds"] == {"ft": 1.5} and "stage_selected" not in s.state_dict()
    s.stage_best = {"step": 2, "stage_step": 2, "val_acc": 1.0}
    s.hand_over("ft")
    s.end_stage(0)
    assert (s.stage_index, s.stage_step, s.stage_best) == (1, 0, None)
    assert s.state_dict()["stage_selected"] == {"ft": {"step": 2, "stage_step": 2, "val_acc": 1.0}}
    # a key a later (or earlier) version wrote survives a resume
    s2 = LoopState()
    s2.load_state_dict({**OLD_LOOP, "future_key": [1, 2]})
    assert s2.extra == {"future_key": [1, 2]} and s2.state_dict()["future_key"] == [1, 2]
