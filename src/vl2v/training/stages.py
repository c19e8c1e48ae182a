"""One run's stages, step by step (:class:`StageRunner`).

A stage (a linear probe, ADiP's Align, a fine-tuning stage) runs from its next step (0, or where a resumed
run's checkpoint stopped) to its end: each step updates the algorithm on the data stream's minibatches;
every ``eval_every`` steps and at the stage's last step the run is evaluated, the record written, the best
checkpoints kept and the resume state saved. The next stage starts from this stage's best checkpoint.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vl2v.methods import Algorithm, Stage
from vl2v.runs.layout import RunDir
from vl2v.runs.records import RunRecorder
from vl2v.training.bill import TeacherAccount
from vl2v.training.checkpoint import load_weights, save_state, save_weights
from vl2v.training.distributed import all_reduce_sum, wrap
from vl2v.training.distributed import info as dist_info
from vl2v.training.evaluator import Evaluator
from vl2v.training.hooks import StepInfo, TrainerHooks
from vl2v.training.state import LoopState
from vl2v.training.stream import DataStream
from vl2v.training.swad import LossValley
from vl2v.training.task import RunTask
from vl2v.utils.progress import bar


def cacheable_prefix(task: RunTask, algo: Algorithm, stage: Stage, backbone_pristine: bool) -> int:
    """How many leading student stages this (fine-tuning) stage can take from a cache: they are frozen,
    still pretrained (no earlier stage trained them) and their BatchNorm is in eval mode; 0 = none."""
    cfg = task.cfg
    n = cfg.schedule.freeze_stages
    st = algo.student
    if (not cfg.cache_prefix or n <= 0 or stage.backbone_frozen or not backbone_pristine or st is None
            or not algo.info.uses_registry_student or not getattr(st, "splittable", False) or not st.freeze_bn):
        return 0
    if any(p.requires_grad for m in st.stages()[:n] for p in m.parameters()):
        return 0
    if not task.res.prefix_cache_fits(st, n, len(task.train_indices) + len(task.data.bank)):
        return 0
    return n


@dataclass
class _StageRun:
    """One stage being run: what its steps, evaluations and checkpoints share."""

    index: int  # the stage's position in the algorithm's stages
    stage: Stage
    last: bool  # the run's last stage: SWAD may average it, and no next stage takes its best checkpoint
    use_feats: bool  # trains (and is evaluated) on the pretrained student's cached features
    model: nn.Module  # what the update runs (the algorithm, or its DistributedDataParallel wrapper)
    swad: LossValley | None
    pbar: Any  # the stage's progress bar


class StageRunner:
    """Runs ``algo``'s stages for one run; ``state`` is the loop state a resume checkpoint saves and
    ``t_start`` the time the run's clock counts from."""

    def __init__(self, task: RunTask, algo: Algorithm, state: LoopState, stream: DataStream, evaluator: Evaluator,
                 recorder: RunRecorder, rd: RunDir, account: TeacherAccount, hooks: TrainerHooks, t_start: float,
                 main: bool, student_key: tuple) -> None:
        self.task, self.cfg, self.res = task, task.cfg, task.res
        self.algo, self.state, self.stream, self.evaluator = algo, state, stream, evaluator
        self.recorder, self.rd, self.account, self.hooks = recorder, rd, account, hooks
        self.t_start, self.main, self.student_key = t_start, main, student_key
        self.device = evaluator.device
        self.n_stages = 0
        self._best_mem: dict[str, torch.Tensor] | None = None  # the current stage's best weights, in memory

    def run(self, stages: list[Stage], resume_state: dict | None) -> LossValley | None:
        """Every stage from the loop state's current one; returns the last stage's SWAD averager, if any."""
        self.n_stages = len(stages)
        swad: LossValley | None = None
        backbone_pristine = True  # no stage so far trained the backbone
        for si, stage in enumerate(stages):
            if si >= self.state.stage_index and self.hooks.run_stage(stage):
                swad = self._run_stage(si, stage, stages, backbone_pristine, resume_state)
            backbone_pristine = backbone_pristine and stage.backbone_frozen
        return swad

    def _run_stage(self, si: int, stage: Stage, stages: list[Stage], backbone_pristine: bool,
                   resume_state: dict | None) -> LossValley | None:
        """Stage ``si`` from its next step to its end; the next stage then starts from this stage's best
        checkpoint. Returns the stage's SWAD averager, if any."""
        state = self.state
        resuming = resume_state is not None and si == state.stage_index and state.stage_step > 0
        st = self._begin_stage(si, stage, si == len(stages) - 1, backbone_pristine, resume_state if resuming else None)
        t_stage = time.time()
        self._train_steps(st)
        st.pbar.close()
        state.add_stage_seconds(stage.name, time.time() - t_stage)
        if not st.last:  # the next stage starts from this stage's best checkpoint
            self._load_stage_best(si)
            state.hand_over(stage.name)  # which checkpoint the next stage started from, for final.json
        state.end_stage(si)
        self._best_mem = None
        return st.swad

    def _begin_stage(self, si: int, stage: Stage, last: bool, backbone_pristine: bool,
                     resume_state: dict | None) -> _StageRun:
        """Set the stage up: the algorithm's stage and optimizer, the data stream (a new one, or the resumed
        stage's, ``resume_state``), the caches its steps read, SWAD and the progress bar."""
        algo, cfg, res, state = self.algo, self.cfg, self.res, self.state
        algo.begin_stage(stage)
        if resume_state is not None and algo.optimizer is not None and resume_state.get("optimizer"):
            algo.optimizer.load_state_dict(resume_state["optimizer"])
        model = wrap(algo, self.device)  # DistributedDataParallel when data-parallel
        if resume_state is None:  # a resumed stage continues the stream it saved
            state.start_stream(stage.name, self.stream.reset(stage))
        stored = self.stream.kind == "stored"
        use_feats = stage.backbone_frozen and backbone_pristine and stored
        train = self.task.train_indices
        feats = res.frozen_features(algo.student, train, "train", self.student_key) if use_feats else None
        prefix = self.evaluator.prefix_n = cacheable_prefix(self.task, algo, stage, backbone_pristine)
        hidden = None
        if prefix and stored:  # stored views (replayed, not freshly augmented) start from cached activations too
            hidden = res.frozen_features(algo.student, train, "train", self.student_key, prefix=prefix)
        self.stream.use_caches(feats, hidden, prefix)
        swad = LossValley(algo, cfg.swad_cfg) if (cfg.swad and last and not stage.backbone_frozen) else None
        if swad is not None and resume_state is not None and resume_state.get("swad"):
            swad.load_state_dict(resume_state["swad"])
        pbar = bar(stage.steps, desc=f"{self.task.spec.algorithm}/{self.task.target_name}/{stage.name}",
                   unit="step", disable=not self.main)
        pbar.update(state.stage_step)
        algo.train()
        return _StageRun(index=si, stage=stage, last=last, use_feats=use_feats, model=model, swad=swad, pbar=pbar)

    def _is_eval_step(self, s: int, stage: Stage) -> bool:
        return s % self.cfg.eval_every == 0 or s == stage.steps - 1

    def _train_steps(self, st: _StageRun) -> None:
        """The stage's remaining steps: update, SWAD's running average, and on evaluation steps an evaluation
        and checkpoint; the hooks hear of each step."""
        algo, state, stage, clock = self.algo, self.state, st.stage, self.hooks.clock
        batches = self.stream.batches(algo, stage, state.stage_step, state.stream[stage.name],
                                      snapshot_at=lambda s: self._is_eval_step(s, stage))
        try:
            while True:
                t0 = clock(self.device)
                item = next(batches, None)
                if item is None:
                    return
                s, mbs, rng = item
                t1 = time.perf_counter()
                global_step = state.global_step
                logs = algo.update(mbs, st.model, autocast=self.evaluator.autocast())
                state.loss_sum += logs.get("loss", 0.0)
                state.loss_n += 1
                if st.swad is not None:
                    st.swad.observe(algo, state.global_step)
                st.pbar.update(1)
                evaluated = self._is_eval_step(s, stage)
                if evaluated:
                    self._evaluate_and_checkpoint(st, s, logs, rng)
                else:
                    state.global_step += 1
                    state.stage_step = s + 1
                info = StepInfo(stage=stage, step=s, global_step=global_step, wait_s=t1 - t0,
                                step_s=clock(self.device) - t0, evaluated=evaluated, loss=logs.get("loss"))
                if self.hooks.on_step(info):
                    return
        finally:
            batches.close()

    def _load_stage_best(self, si: int) -> None:
        """Load stage ``si``'s best checkpoint into the algorithm (kept in memory, else its file), if it has one."""
        best = self._best_mem
        path = self.rd.stage_best(si)
        if best is None and path.exists():
            best = load_weights(path)[0]
        if best is not None:
            self.algo.load_state_dict(best)

    def _evaluate_and_checkpoint(self, st: _StageRun, s: int, logs: dict, rng: dict) -> None:
        """Evaluation step ``s``: evaluate, record, update SWAD and the best checkpoints, save the resume state."""
        algo, state, stage = self.algo, self.state, st.stage
        step = state.global_step
        ev = self.evaluator.evaluation(algo, st.use_feats, stage=stage.name, step=step)
        loss = self._mean_train_loss()
        self.recorder.write(step=step, stage=stage.name, stage_step=s, loss=loss, evals=ev,
                            wall=time.time() - self.t_start, queries=self.account.queries(), extra=logs)
        st.pbar.set_postfix(loss=f"{loss:.3f}", val=f"{ev['val_acc']:.3f}",
                            tgt=f"{ev[f'env{self.task.spec.target}_in_acc']:.3f}")
        if st.swad is not None:
            st.swad.close_segment(ev["val_loss"], step)
        save = self.cfg.save_checkpoints and self.main
        self._keep_bests(st, s, step, ev["val_acc"], save)
        state.global_step = step + 1
        state.stage_step = s + 1
        state.elapsed = time.time() - self.t_start
        if save:
            save_state(self.rd.last_state, {
                "algorithm": algo.state_dict(), "loop": state.state_dict(),
                "optimizer": algo.optimizer.state_dict() if algo.optimizer else {},
                "sampler": rng["sampler"], "gen": rng["gen"], "torch_rng": torch.get_rng_state(),
                "swad": st.swad.state_dict() if st.swad is not None else None})

    def _mean_train_loss(self) -> float:
        """The mean training loss since the last evaluation, over all ranks' shards; the sums start again."""
        state = self.state
        loss_sum = float(all_reduce_sum(torch.tensor([state.loss_sum], dtype=torch.float64))) / dist_info().world_size
        loss = loss_sum / max(1, state.loss_n)
        state.loss_sum, state.loss_n = 0.0, 0
        return loss

    def _keep_bests(self, st: _StageRun, s: int, step: int, val_acc: float, save: bool) -> None:
        """Keep the evaluated weights as the stage's best (handed to the next stage) and the run's best (its
        model) where they beat the best so far, and may compete."""
        algo, cfg, state, rd, stage = self.algo, self.cfg, self.state, self.rd, st.stage
        # a non-final stage's checkpoints compete for its best only from stage step `stage_select_min_step` on
        # (the authors' --model_save); its last evaluation always does, so a shorter stage still has a best
        eligible = st.last or s >= cfg.stage_select_min_step or s == stage.steps - 1
        if eligible and (state.stage_best is None or val_acc > state.stage_best["val_acc"]):
            state.stage_best = {"step": step, "stage_step": s, "val_acc": val_acc}
            self._best_mem = copy.deepcopy(algo.state_dict())
            if save:
                save_weights(rd.stage_best(st.index), algo.state_dict(), {"step": step, "stage": stage.name})
        candidate = cfg.select_stage == "all" or st.index == self.n_stages - 1
        if candidate and (state.best is None or val_acc > state.best["val_acc"]):
            state.best = {"step": step, "val_acc": val_acc}
            if save:
                save_weights(rd.best, algo.state_dict(), {"step": step, "stage": stage.name, "val_acc": val_acc})
