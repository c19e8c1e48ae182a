"""What a finished run leaves (:func:`finish_run`): its selected model, SWAD's average, its predictions,
``final.json`` and the ``done`` mark.

The model is chosen by training-domain validation among the recorded evaluations (and the test-domain
oracle's choice is written beside it); SWAD averages the last stage's loss valley; the run's accounts say
what it cost (teacher queries and bill), what it trained on (the data stream's digests) and how long it
took. Then the resume state and per-stage checkpoints are dropped and the run is marked done.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from vl2v.methods import Algorithm, Stage
from vl2v.runs.layout import RunDir
from vl2v.runs.records import RunRecorder
from vl2v.runs.selection import select_record, summarize
from vl2v.training.bill import TeacherAccount
from vl2v.training.checkpoint import load_weights, save_weights
from vl2v.training.distributed import barrier
from vl2v.training.evaluator import Evaluator
from vl2v.training.state import LoopState
from vl2v.training.stream import DataStream
from vl2v.training.swad import LossValley
from vl2v.utils.io import atomic_write_json, atomic_write_text


@dataclass
class RunEnd:
    """What the end of one run reads: the run's parts as the loop leaves them."""

    evaluator: Evaluator
    account: TeacherAccount
    stream: DataStream
    state: LoopState
    recorder: RunRecorder
    rd: RunDir
    t_start: float
    main: bool
    novel_fold: int | None

    def finish(self, algo: Algorithm, stages: list[Stage], swad: LossValley | None) -> dict[str, Any]:
        """Select the run's model, average it with SWAD, write its predictions and ``final.json``, and mark the
        run done (its resume state and per-stage checkpoints removed). Returns ``final.json``'s content."""
        task = self.evaluator.task
        spec, cfg, rd = task.spec, task.cfg, self.rd
        final: dict[str, Any] = {"run_dir": str(rd.path), "algorithm": algo.info.name, "target": spec.target,
                                 "target_name": task.target_name, "trial_seed": spec.trial_seed}
        barrier()  # rank 0 has written every record
        self._select(final)
        if cfg.save_checkpoints and self.main and stages:
            save_weights(rd.last_weights, algo.state_dict(), {"step": self.state.global_step - 1})
        if swad is not None:
            final["swad"] = self._apply_swad(algo, swad)
        if self.main:
            checkpoint = self._final_model(algo, stages)
            cos = self.evaluator.teacher_cosine(algo)
            if cos is not None:  # cos(z, I_t) on the target, of the model the run reports
                final["teacher_cos"] = {**cos, "checkpoint": checkpoint}
            if task.data.novel:
                final["novel"] = self.evaluator.novel_scores(algo, checkpoint, self.novel_fold)
        self._accounts(final, stages)
        if self.main:
            self._write_final(final)
        barrier()
        return final

    def _select(self, final: dict[str, Any]) -> None:
        """The records' training-domain selection (and the oracle's), into ``final``."""
        records = self.recorder.records()
        stages = self.evaluator.task.cfg.select_stage
        chosen = select_record(records, stages=stages)
        if chosen is not None:
            final["selected"] = summarize(chosen)
            final["oracle"] = summarize(select_record(records, "oracle"), "oracle")
            final["selection"] = {"method": "training_domain", "stages": stages}

    def _apply_swad(self, algo: Algorithm, swad: LossValley) -> dict[str, Any]:
        """Average the loss valley SWAD found into the algorithm and evaluate it: ``final.json``'s ``swad``."""
        summary = swad.summary()
        if not swad.apply_to(algo):
            return {"note": "SWAD found no loss valley (validation loss never converged); not averaged", **summary}
        step = self.state.global_step
        ev = self.evaluator.evaluation(algo, use_feats=False, stage="swad", step=step)
        out = {**summarize({**ev, "args": self.recorder.args, "step": step, "stage": "swad"}), **summary}
        if self.evaluator.task.cfg.save_checkpoints and self.main:
            save_weights(self.rd.swad, algo.state_dict(), {"swad": summary})
        return out

    def _final_model(self, algo: Algorithm, stages: list[Stage]) -> str:
        """Make the selected checkpoint the run's model and write its predictions; returns which checkpoint the
        algorithm holds now ("selected", or "last" when no checkpoint was kept)."""
        rd = self.rd
        if self.evaluator.task.cfg.save_checkpoints and rd.best.exists():
            os.replace(rd.best, rd.model)
            algo.load_state_dict(load_weights(rd.model)[0])
            self.evaluator.write_predictions(algo, rd.predictions)
            return "selected"
        if not stages:
            self.evaluator.write_predictions(algo, rd.predictions)
            return "selected"
        return "last"

    def _accounts(self, final: dict[str, Any], stages: list[Stage]) -> None:
        """What the run cost and trained on, into ``final``: queries, teacher bill, data stream, times."""
        state, task = self.state, self.evaluator.task
        final["queries"] = self.account.queries()
        if self.account.store is not None:
            final["teacher_bill"] = self.account.bill()
        if stages:  # per stage: the stream's seed and a digest of every (image, view) it trained on, in order
            stored = self.stream.kind == "stored"
            final["data_stream"] = {"kind": self.stream.kind, "views": task.res.views if stored else None,
                                    "stages": state.stream or {}}
        final["stage_seconds"] = {k: round(v, 2) for k, v in (state.stage_seconds or {}).items()}
        if state.stage_selected:  # the checkpoint each non-final stage handed to the next
            final["stage_selected"] = state.stage_selected
        final["n_train_images"] = len(task.train_indices)
        final["wall_time"] = time.time() - self.t_start

    def _write_final(self, final: dict[str, Any]) -> None:
        """Write ``final.json``, drop what only an unfinished run needs, and mark the run done."""
        rd = self.rd
        ckpt = rd.checkpoints
        atomic_write_json(rd.final_json, final)
        # the run is final: drop resume state, per-stage bests and temp files of interrupted writes
        if ckpt.is_dir():
            for p in [rd.last_state, *rd.stage_bests(), *rd.temp_files()]:
                if p.exists():
                    p.unlink()
            if not any(ckpt.iterdir()):
                ckpt.rmdir()
        atomic_write_text(rd.done, "done")
