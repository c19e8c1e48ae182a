"""Sweeps: datasets x target domains x algorithms x hyperparameters x seeds, one job per run.

Each job is one :class:`~vl2v.config.ExperimentConfig` (one dataset, target,
algorithm variant, hparams seed and trial seed) with a stable id (a hash of the config), run
through the experiment API (:func:`vl2v.experiment.run.run_experiment`) in
``SWEEP/jobs/<id>/``; ``job.json`` holds the config. A finished job leaves ``job.done``, so
launching the same sweep again skips it and an interrupted job resumes from
its last checkpoint. Launchers:

* ``local``: a pool of worker processes sized to the machine (one per GPU, or
  cores // threads-per-job on CPU), each job a ``python -m vl2v.experiment.sweep JOB_DIR`` process;
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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from vl2v.config import ExperimentConfig, from_dict
from vl2v.errors import ConfigError
from vl2v.runs.layout import JobDir, SweepDir
from vl2v.utils.io import atomic_write_json, atomic_write_text

#: ``configure(dataset=..., data_dir=..., data_root=...)`` -> the sweep's options applied to one dataset
Configure = Callable[..., ExperimentConfig]


@dataclass(frozen=True)
class Job:
    id: str
    config: ExperimentConfig = field(hash=False, compare=False)  # out_dir is set by the sweep (job_dir)
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def job_dir(self, sweep_dir: Path) -> Path:
        return SweepDir(sweep_dir).job(self.id).path

    def config_in(self, sweep_dir: Path) -> ExperimentConfig:
        return replace(self.config, out_dir=str(self.job_dir(sweep_dir)))


def _config_json(cfg: ExperimentConfig) -> dict[str, Any]:
    """A job's config as its ``job.json`` holds it. A secret teacher option (an API key) is refused: job files
    are plain files (and SLURM copies them around); the backends read the key from their environment variable."""
    from vl2v.teachers.registry import SECRET_OPTIONS

    secret = sorted(SECRET_OPTIONS & set(cfg.teacher_options))
    if secret:
        raise ConfigError(f"--teacher-opt {secret[0]}=... would be written into every job's job.json: set the key in "
                          "the teacher's environment variable instead (VL2V_API_KEY for remote:, the vendor's own "
                          "for vendor:, see docs/vendors.md) and run the sweep again")
    return json.loads(json.dumps(asdict(cfg), default=str))


def job_id(cfg: ExperimentConfig) -> str:
    """A hash of everything that defines the job (its output folder excluded)."""
    d = _config_json(cfg)
    d.pop("out_dir", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


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
           grid: dict[str, dict[str, list[str]]] | None = None, configure: Configure | None = None,
           root: str | None = None, hparams_seeds: list[int] | None = None) -> list[Job]:
    """Every (dataset, target, algorithm variant, hparams seed, seed) as a job with a stable id.

    ``configure(dataset=, data_dir=, data_root=)`` returns the experiment the sweep's
    training options describe for one dataset (profile budgets can depend on it);
    default: :class:`ExperimentConfig` with those fields. ``hparams_seeds``: one job per
    random hyperparameter draw (:func:`vl2v.methods.search.random_hparams`; 0 = the defaults);
    ``None`` keeps the configured ``hparams_seed`` (0), so the job ids of a sweep without a
    search are unchanged.
    """
    from vl2v.data.folder import dataset_domains
    from vl2v.experiment.plan import resolve_targets
    from vl2v.experiment.setup import AlgoSpec

    configure = configure or (lambda **kw: ExperimentConfig(**kw))

    grid = grid or {}
    for a in algorithms:
        AlgoSpec.parse(a)  # unknown names and bad options fail here, before anything runs
    written = [a.partition(":")[0] for a in algorithms]  # the names as written, which --grid refers to
    for a in grid:
        if a not in written:
            raise ConfigError(f"--grid names algorithm {a!r}, which is not in the sweep's algorithms")
    variants: list[str] = []  # every grid point of every algorithm, written as a user would (job ids hash them)
    for a, name in zip(algorithms, written):
        g = grid.get(name, {})
        keys = sorted(g)
        variants += [AlgoSpec.extend(a, dict(zip(keys, values))) for values in itertools.product(*(g[k] for k in keys))]
    jobs: list[Job] = []
    for ds in datasets:
        where = (dict(dataset=None, data_dir=str(Path(ds).resolve()), data_root=None) if Path(ds).is_dir()
                 else dict(dataset=ds, data_dir=None, data_root=root))
        domains = dataset_domains(where["dataset"], where["data_root"], where["data_dir"])
        tgts = resolve_targets(targets, domains) or range(len(domains))
        base = configure(**where)
        hps = list(dict.fromkeys(hparams_seeds)) if hparams_seeds else [base.hparams_seed]
        if any(h < 0 for h in hps):
            raise ConfigError(f"hparams seeds must be >= 0, got {hps}")
        for t in tgts:
            for v in variants:
                for h in hps:
                    for s in seeds:
                        cfg = replace(base, targets=(t,), algorithms=(v,), seeds=(s,), hparams_seed=h, out_dir="")
                        jobs.append(Job(job_id(cfg), cfg, {"dataset": ds, "target": domains[t],
                                                           "algorithm": v, "hparams_seed": h, "seed": s}))
    return jobs


def sweep_processes(threads_per_job: int = 1) -> int:
    """Jobs a local sweep runs at once: one per GPU, else the cores divided by each job's threads (not to be
    confused with :func:`vl2v.data.loader.default_workers`, the loader processes of one run)."""
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
    cmd = [sys.executable, "-m", "vl2v.experiment.sweep", str(d)]
    with open(jd.log, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, stdout=log, stderr=log, env=env).returncode
    return rc


def run_job_in_process(job_dir: str) -> int:
    """Run one job (its ``job.json`` config) in this process; the entry point of local and submitit jobs."""
    from vl2v.experiment.run import run_experiment

    jd = JobDir(job_dir)
    cfg = replace(from_dict(ExperimentConfig, json.loads(jd.job_json.read_text())["config"]), out_dir=str(jd.path))
    result = run_experiment(cfg, resume=True)
    print(result["text"])
    atomic_write_text(jd.job_done, "done")
    return 0


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
    atomic_write_json(sd.sweep_json, {"jobs": [{"id": j.id, **j.meta} for j in jobs]})
    for j in jobs:
        j.job_dir(sweep_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(sd.job(j.id).job_json, {"id": j.id, **j.meta, "config": _config_json(j.config_in(sweep_dir))})
    pending = [j for j in jobs if not sd.job(j.id).is_done()]
    skipped = len(jobs) - len(pending)
    log(f"sweep {sweep_dir}: {len(jobs)} jobs, {skipped} already finished, {len(pending)} to run ({launcher})")
    failed: list[str] = []
    if launcher == "local":
        n = workers or sweep_processes(threads_per_job)
        gpus = sweep_processes() if _cuda() else 0
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
        from vl2v.utils.extras import require

        require("slurm", "submitit")
        import submitit
        ex = submitit.AutoExecutor(folder=str(sd.submitit), cluster="local" if launcher == "submitit-local" else None)
        params = dict(slurm or {})
        if launcher == "submitit-local":
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
        ex.update_parameters(**params)
        submitted = ex.map_array(run_job_in_process, [str(j.job_dir(sweep_dir)) for j in pending]) if pending else []
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


def _main(argv: list[str]) -> int:
    """``python -m vl2v.experiment.sweep JOB_DIR``: run one job of a sweep (what the local launcher starts)."""
    from vl2v.errors import UserError

    if len(argv) != 1:
        print("usage: python -m vl2v.experiment.sweep JOB_DIR", file=sys.stderr)
        return 2
    try:
        return run_job_in_process(argv[0])
    except UserError as exc:
        print(f"vl2v: {exc.prefix}: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
