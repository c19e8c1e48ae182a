"""Run records: one JSON line per evaluation, readable by DomainBed's own tools.

Each line keeps DomainBed's keys (``args`` with ``dataset``, ``algorithm``,
``test_envs``, ``trial_seed``, ``hparams_seed``; ``hparams``; ``step``;
``env{i}_in_acc`` / ``env{i}_out_acc``) beside ours (``stage``, ``loss``,
``val_acc``, ``teacher_image_queries`` ..., ``wall_time``). A finished run
has a ``done`` file, as in DomainBed, so ``domainbed.scripts.collect_results``
can read a vl2v output directory. This one schema feeds model selection
(:mod:`vl2v.runs.selection`), as DomainBed's records feed its ``model_selection.py``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vl2v.runs.layout import RunDir
from vl2v.utils.io import append_jsonl, atomic_write_text, read_jsonl

# ``args`` of a record: DomainBed's keys (dataset, algorithm, test_envs = [target domain index], trial_seed,
# hparams_seed, output_dir, data_dir, holdout_fraction) plus vl2v's run settings (teacher, teacher_options,
# teacher_identity, student, views, threads: the torch threads of the run's step, on which its numbers depend).
# A record also holds, per evaluated split, ``env{i}_{in,out}_{acc,loss}`` (every domain's "out",
# the target's "in"; the sources' "in" with eval_source_in), ``val_acc``/``val_loss`` (mean over the
# sources' "out"), ``teacher_<stat>`` query counters and ``train_<log>`` training logs.
Record = dict[str, Any]


class RunRecorder:
    def __init__(self, run_dir: Path, args: dict[str, Any], hparams: dict[str, Any], enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = RunDir(self.run_dir).results_jsonl
        self.args = args
        self.hparams = hparams
        self.enabled = enabled  # only one process of a data-parallel run writes

    def write(self, step: int, stage: str, stage_step: int, loss: float | None, evals: dict[str, float],
              wall: float, queries: dict[str, float] | None = None, extra: dict[str, float] | None = None) -> Record:
        rec: dict[str, Any] = {"args": self.args, "hparams": self.hparams, "step": step, "stage": stage,
                               "stage_step": stage_step, "loss": loss, "wall_time": round(wall, 3),
                               "time": time.time()}
        rec.update(evals)
        for k, v in (queries or {}).items():
            rec[f"teacher_{k}"] = v
        for k, v in (extra or {}).items():
            if k != "loss":
                rec[f"train_{k}"] = v
        if self.enabled:
            append_jsonl(self.path, rec)
        return rec

    def records(self) -> list[Record]:
        return read_jsonl(self.path) if self.path.exists() else []

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (a resumed run rewrites them)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in self.records() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))
