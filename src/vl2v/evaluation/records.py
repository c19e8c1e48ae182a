"""Run records: one JSON line per evaluation, readable by DomainBed's own tools.

Each line keeps DomainBed's keys (``args`` with ``dataset``, ``algorithm``,
``test_envs``, ``trial_seed``, ``hparams_seed``; ``hparams``; ``step``;
``env{i}_in_acc`` / ``env{i}_out_acc``) beside ours (``stage``, ``loss``,
``val_acc``, ``teacher_image_queries`` ..., ``wall_time``). A finished run
has a ``done`` file, as in DomainBed, so ``domainbed.scripts.collect_results``
can read a vl2v output directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from vl2v.utils.io import append_jsonl, atomic_write_text, read_jsonl
import json


class RunRecorder:
    def __init__(self, run_dir: Path, args: dict[str, Any], hparams: dict[str, Any], enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "results.jsonl"
        self.args = args
        self.hparams = hparams
        self.enabled = enabled  # only one process of a data-parallel run writes

    def write(self, step: int, stage: str, stage_step: int, loss: float | None, evals: dict[str, float],
              wall: float, queries: dict[str, float] | None = None, extra: dict[str, float] | None = None) -> dict[str, Any]:
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

    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path) if self.path.exists() else []

    def record_at(self, step: int) -> dict[str, Any]:
        for r in self.records():
            if r["step"] == step:
                return r
        raise KeyError(f"no record at step {step} in {self.path}")

    def truncate_after(self, step: int) -> None:
        """Drop records newer than ``step`` (a resumed run rewrites them)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [r for r in self.records() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in keep))


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """Records, config and final summary of one run directory."""
    run_dir = Path(run_dir)
    out: dict[str, Any] = {"run_dir": str(run_dir), "done": (run_dir / "done").exists()}
    out["records"] = read_jsonl(run_dir / "results.jsonl") if (run_dir / "results.jsonl").exists() else []
    if (run_dir / "final.json").exists():
        out["final"] = json.loads((run_dir / "final.json").read_text())
    if (run_dir / "config.json").exists():
        out["config"] = json.loads((run_dir / "config.json").read_text())
    return out


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Every run directory (holding ``results.jsonl``) under the given paths, sorted."""
    found: set[Path] = set()
    for p in paths:
        p = Path(p)
        if (p / "results.jsonl").exists():
            found.add(p)
        elif p.is_dir():
            found.update(q.parent for q in p.rglob("results.jsonl"))
        else:
            raise FileNotFoundError(f"{p} is not a run directory or a folder of runs")
    return sorted(found)
