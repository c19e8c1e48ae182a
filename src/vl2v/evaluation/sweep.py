"""Sweeps: datasets x target domains x algorithms x hyperparameters x seeds, one job per run.

Each job is one ``vl2v train`` command with a stable id (a hash of its
arguments), run in ``SWEEP/jobs/<id>/``. A finished job leaves ``job.done``, so
launching the same sweep again skips it and an interrupted job resumes from
its last checkpoint. Launchers:

* ``local``: a pool of worker processes sized to the machine (one per GPU, or
  cores // threads-per-job on CPU), each job a ``python -m vl2v train`` process;
* ``slurm``: submitit job arrays on a SLURM cluster (``submitit-local`` runs the
  same submitit path as local processes, for testing).

``vl2v report SWEEP`` aggregates every finished run of the sweep.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from vl2v.errors import ConfigError
from vl2v.runs.layout import JobDir, SweepDir
from vl2v.utils.io import atomic_write_json, atomic_write_text


@dataclass(frozen=True)
class Job:
    id: str
    argv: tuple[str, ...]  # the `vl2v train` arguments, without --out
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def job_dir(self, sweep_dir: Path) -> Path:
        return SweepDir(sweep_dir).job(self.id).path

    def full_argv(self, sweep_dir: Path) -> list[str]:
        return [*self.argv, "--out", str(self.job_dir(sweep_dir))]


def job_id(argv: list[str]) -> str:
    return hashlib.sha256(json.dumps(list(argv)).encode()).hexdigest()[:12]


def _domains(dataset: str, root: str | None) -> list[str]:
    from vl2v.data.registry import resolve_dataset

    path = Path(dataset)
    if path.is_dir():
        return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    spec, _ = resolve_dataset(dataset, root)
    return list(spec.domains)


def parse_grid(items: list[str] | None) -> dict[str, dict[str, list[str]]]:
    """``["adip.lam=0,0.5,1", "kd.temperature=2,4"]`` -> {"adip": {"lam": [...]}, "kd": {...}}."""
    grid: dict[str, dict[str, list[str]]] = {}
    for it in items or []:
        if "=" not in it or "." not in it.split("=", 1)[0]:
            raise ConfigError(f"bad --grid {it!r}: expected ALGORITHM.KEY=V1,V2,...")
        lhs, rhs = it.split("=", 1)
        algo, key = lhs.split(".", 1)
        grid.setdefault(algo.strip(), {})[key.strip()] = [v.strip() for v in rhs.split(",") if v.strip()]
    return grid


def expand(datasets: list[str], algorithms: list[str], seeds: list[int], targets: list[str] | None = None,
           grid: dict[str, dict[str, list[str]]] | None = None, train_args: list[str] | None = None,
           root: str | None = None) -> list[Job]:
    """Every (dataset, target, algorithm variant, seed) as a job with a stable id."""
    from vl2v.methods.base import get_algorithm

    grid = grid or {}
    for a in grid:
        if a not in [x.split(":")[0] for x in algorithms]:
            raise ConfigError(f"--grid names algorithm {a!r}, which is not in the sweep's algorithms")
    variants: list[str] = []
    for a in algorithms:
        name = a.split(":")[0]
        get_algorithm(name)  # unknown names fail here, before anything runs
        g = grid.get(name, {})
        if not g:
            variants.append(a)
            continue
        keys = sorted(g)
        for values in itertools.product(*(g[k] for k in keys)):
            extra = ",".join(f"{k}={v}" for k, v in zip(keys, values))
            variants.append(f"{a},{extra}" if ":" in a else f"{a}:{extra}")
    jobs: list[Job] = []
    for ds in datasets:
        domains = _domains(ds, root)
        tgts = targets or [str(i) for i in range(len(domains))]
        data_args = ["--data", str(Path(ds).resolve())] if Path(ds).is_dir() else ["--dataset", ds]
        if root and not Path(ds).is_dir():
            data_args += ["--root", root]
        for t in tgts:
            tgt = str(domains.index(t)) if t in domains else t
            if not tgt.isdigit() or int(tgt) >= len(domains):
                raise ConfigError(f"target {t!r} is not a domain of {ds} ({', '.join(domains)})")
            for v in variants:
                for s in seeds:
                    argv = ["train", *data_args, "--target", tgt, "--algorithm", v, "--seed", str(s), *(train_args or [])]
                    jobs.append(Job(job_id(argv), tuple(argv), {"dataset": ds, "target": domains[int(tgt)],
                                                               "algorithm": v, "seed": s}))
    return jobs


def default_workers(threads_per_job: int = 1) -> int:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.device_count()
    except ImportError:  # pragma: no cover
        pass
    return max(1, (os.cpu_count() or 1) // max(1, threads_per_job))


def _run_local(job: Job, sweep_dir: Path, threads: int, gpu: int | None) -> int:
    jd = SweepDir(sweep_dir).job(job.id)
    d = jd.path
    d.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VL2V_PROGRESS": "0"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    with open(jd.log, "a") as log:
        log.write(f"\n$ vl2v {' '.join(job.full_argv(sweep_dir))}\n")
        log.flush()
        rc = subprocess.run([sys.executable, "-m", "vl2v", *job.full_argv(sweep_dir)], stdout=log, stderr=log,
                            env=env).returncode
    if rc == 0:
        atomic_write_text(jd.job_done, "done")
    return rc


def run_job_in_process(argv: list[str], job_dir: str) -> int:
    """Entry point of a submitit (SLURM) job: run `vl2v train` in this process."""
    from vl2v.cli import main

    rc = main(argv)
    if rc == 0:
        atomic_write_text(JobDir(job_dir).job_done, "done")
    return rc


@dataclass
class SweepResult:
    total: int
    skipped: int
    succeeded: int
    failed: list[str]


def run_sweep(jobs: list[Job], sweep_dir: str | Path, launcher: str = "local", workers: int | None = None,
              threads_per_job: int = 1, slurm: dict[str, Any] | None = None,
              log: Callable[[str], None] = print) -> SweepResult:
    sweep_dir = Path(sweep_dir)
    sd = SweepDir(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(sd.sweep_json, {"jobs": [{"id": j.id, "argv": list(j.argv), **j.meta} for j in jobs]})
    for j in jobs:
        j.job_dir(sweep_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(sd.job(j.id).job_json, {"id": j.id, "argv": list(j.argv), **j.meta})
    pending = [j for j in jobs if not sd.job(j.id).is_done()]
    skipped = len(jobs) - len(pending)
    log(f"sweep {sweep_dir}: {len(jobs)} jobs, {skipped} already finished, {len(pending)} to run ({launcher})")
    failed: list[str] = []
    if launcher == "local":
        n = workers or default_workers(threads_per_job)
        gpus = default_workers() if _cuda() else 0
        from vl2v.utils.progress import bar

        pbar = bar(len(pending), desc="sweep", unit="job")
        with cf.ThreadPoolExecutor(max_workers=n) as pool:
            futs = {pool.submit(_run_local, j, sweep_dir, threads_per_job, (k % gpus) if gpus else None): j
                    for k, j in enumerate(pending)}
            for fut in cf.as_completed(futs):
                j = futs[fut]
                if fut.result() != 0:
                    failed.append(j.id)
                    log(f"  job {j.id} ({j.meta}) failed: see {sd.job(j.id).log}")
                pbar.update(1)
        pbar.close()
    elif launcher in ("slurm", "submitit-local"):
        try:
            import submitit
        except ImportError as exc:
            raise ConfigError("the slurm launcher needs submitit (pip install submitit)") from exc
        ex = submitit.AutoExecutor(folder=str(sd.submitit), cluster="local" if launcher == "submitit-local" else None)
        params = dict(slurm or {})
        if launcher == "submitit-local":
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        ex.update_parameters(**params)
        submitted = ex.map_array(run_job_in_process, [j.full_argv(sweep_dir) for j in pending],
                                 [str(j.job_dir(sweep_dir)) for j in pending]) if pending else []
        log(f"  submitted {len(submitted)} jobs (submitit folder {sd.submitit})")
        for j, s in zip(pending, submitted):
            try:
                rc = s.result()
            except Exception as exc:  # the job raised: submitit keeps its logs
                rc = 1
                log(f"  job {j.id} failed: {exc}")
            if rc != 0:
                failed.append(j.id)
    else:
        raise ConfigError(f"unknown launcher {launcher!r}: use local, slurm or submitit-local")
    return SweepResult(len(jobs), skipped, len(pending) - len(failed), failed)


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False
