"""Hooks into the training loop, for tools that watch it (benchmarks, progress readers) without subclassing it.

Give a :class:`TrainerHooks` (a subclass overriding what it needs) to ``Trainer(..., hooks=...)``. The loop
calls :meth:`~TrainerHooks.on_step` after every training step with the step's timings, and
:meth:`~TrainerHooks.on_eval` after every evaluation it records (each ``results.jsonl`` record, and the SWAD
model's evaluation in ``final.json``). The defaults do nothing and change nothing: a run with hooks trains,
evaluates and writes exactly what it would without them. Three hooks exist for benchmarks that time steps
only and do change the run: :meth:`~TrainerHooks.run_stage` (skip stages), :meth:`~TrainerHooks.evaluation`
(placeholder metrics instead of evaluating) and the return value of :meth:`~TrainerHooks.on_step` (end a
stage early).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from vl2v.methods import Stage


@dataclass(frozen=True)
class StepInfo:
    """One training step, as :meth:`TrainerHooks.on_step` sees it."""

    stage: Stage
    step: int  # the stage's step
    global_step: int  # the step over every stage
    #: seconds blocked on this step's minibatches: planning them, rendering (or waiting for the loader
    #: workers that render ahead), assembling them and copying them to the device
    wait_s: float
    #: seconds from asking for the minibatches to the end of the step: ``wait_s``, the update and the loop's
    #: bookkeeping (the evaluation and checkpoint too, on an evaluation step)
    step_s: float
    evaluated: bool  # an evaluation step (every ``eval_every`` steps and the stage's last)
    loss: float | None  # the step's training loss (this rank's), when the algorithm reports one


@dataclass(frozen=True)
class EvalInfo:
    """One evaluation, as :meth:`TrainerHooks.on_eval` sees it."""

    stage: str  # the stage's name; "none" for a training-free run, "swad" for the averaged model
    step: int  # the global step it evaluates
    seconds: float  # the evaluation's time (every split, this rank's shard)
    images: int  # images evaluated, every split and every rank together
    metrics: dict[str, float]  # what it recorded: envD_{in,out}_{acc,loss}, val_acc, val_loss


class TrainerHooks:
    """No-op hooks: subclass and override what you need."""

    #: wait for the device's queued work before each clock reading (CUDA), so ``wait_s``, ``step_s`` and
    #: ``seconds`` measure the device's work too, not only its launch; slows a GPU run down a little
    synchronize: bool = False

    def run_stage(self, stage: Stage) -> bool:
        """Whether to run ``stage``; a skipped stage trains nothing (the next starts from the weights as they
        are). A benchmark timing fine-tuning steps skips the frozen-backbone stages."""
        return True

    def evaluation(self, sets: list[tuple[int, str]]) -> dict[str, float] | None:
        """Metrics to record instead of evaluating the splits ``sets`` ((domain, "in"/"out") pairs), or None
        (the default) to evaluate. A benchmark timing steps only answers with placeholders."""
        return None

    def on_step(self, info: StepInfo) -> bool | None:
        """After each training step. Return True to end the stage after this step (it then ends as if it had
        run its last step: the run goes on to the next stage)."""
        return None

    def on_eval(self, info: EvalInfo) -> None:
        """After each evaluation the run records (``evaluation``'s placeholders included)."""

    def clock(self, device: torch.device) -> float:
        """The loop's clock: ``time.perf_counter()``, after the device's queued work when :attr:`synchronize`
        says so (CUDA)."""
        if self.synchronize and device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()
