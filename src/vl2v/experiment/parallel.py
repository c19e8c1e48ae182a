"""Runs of one experiment trained side by side, in worker processes (``--jobs N``).

A leave-one-domain-out comparison is many independent (algorithm, target, seed) runs of
a small model. On a CPU, N single-threaded processes each training one run keep the
cores busier than one process whose every step is split over N threads (small batches
of a small network do not divide well over threads), so ``--jobs auto`` runs as many
workers as there are cores on a CPU and one on a GPU.

The teacher is asked once, by the parent, before any worker starts: the parent walks
the runs in their usual order and makes each one's teacher queries
(:meth:`~vl2v.training.loop.Trainer.pay_teacher`), so the store is complete and two
workers never pay for the same view; each run records those queries as its own, as it
would have in one process. Workers then only read the store. The parent also computes the
pretrained student's cached features and frozen-prefix activations for every run once
(:meth:`~vl2v.training.loop.Trainer.warm_student_caches`) and every worker loads them from
one file. Both on the runs' own thread count: the teacher's embeddings and the student's
pooled features can change in their last bits with it.

Numbers depend on the number of threads a run's step uses (float sums are split
differently), not on which worker trains it or in which order: every worker uses
``threads`` threads, recorded in each run's ``config.json``. ``--jobs 1 --threads 1`` gives
the same numbers as ``--jobs 2`` with one thread each.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from vl2v.errors import ConfigError
from vl2v.utils.progress import bar


@dataclass(frozen=True)
class WorkerJob:
    """One run of the comparison: what a worker needs besides the experiment itself."""

    index: int  # position in the usual order (results are reported in it)
    run: Any  # vl2v.training.spec.RunSpec, as the plan resolved it
    prepaid: dict[str, float]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _available_memory() -> int | None:
    """Bytes of memory available to new processes (Linux' MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


#: memory one worker holds for an in-memory OfflinePACS/PACS-sized comparison (libraries, data, teacher, caches;
#: measured ~1.6 GiB), with room to spare
WORKER_BYTES = 3 << 30


def resolve_jobs(jobs: int | None, threads: int | None, device: str, n_runs: int,
                 distributed: bool, shared_store: bool = True) -> tuple[int, int]:
    """(worker processes, torch threads per process). ``jobs=None``: auto -- one per core on a CPU (at most one
    per run, and as many as memory allows), 1 on an accelerator, under torchrun or with an in-memory teacher
    store (``shared_store=False``: workers could not read what the parent paid for). ``threads=None``: the
    cores divided among the workers."""
    cores = available_cores()
    if jobs is None:
        if distributed or device != "cpu" or not shared_store:
            jobs = 1
        else:
            jobs = min(cores, max(1, n_runs))
            mem = _available_memory()
            if mem is not None:
                jobs = max(1, min(jobs, mem // WORKER_BYTES))
    elif jobs > 1 and distributed:
        raise ConfigError("--jobs > 1 trains runs in parallel processes; under torchrun every process already "
                          "trains the same run data-parallel: use --jobs 1")
    elif jobs > 1 and not shared_store:
        raise ConfigError("--store memory keeps the teacher's embeddings inside one process, so parallel runs "
                          "would each pay the teacher again: use a store file (the default) or --jobs 1")
    elif jobs > 1 and device != "cpu":
        raise ConfigError(f"--jobs {jobs} would put {jobs} training processes on one {device} device; "
                          "use --jobs 1 (or torchrun for several GPUs)")
    if threads is None:
        threads = max(1, cores // jobs) if jobs > 1 else torch.get_num_threads()
    return jobs, threads


def plugin_modules() -> list[str]:
    """Modules outside vl2v that registered a teacher, student, algorithm or dataset in this process (a user's
    plugin, a test's stand-in teacher): a worker imports them too, so every name the parent knows resolves."""
    import dataclasses
    import inspect

    from vl2v.data.registry import DATASETS
    from vl2v.methods.registry import ALGORITHMS
    from vl2v.students.registry import STUDENTS
    from vl2v.teachers.registry import TEACHERS

    mods: set[str] = set()
    for reg in (TEACHERS, STUDENTS, ALGORITHMS, DATASETS):
        for e in reg.entries():
            objs = [e.obj]
            if dataclasses.is_dataclass(e.obj) and not isinstance(e.obj, type):
                objs += [getattr(e.obj, f.name) for f in dataclasses.fields(e.obj)]
            for o in objs:
                if inspect.isfunction(o) or inspect.isclass(o):
                    m = o.__module__
                    if m and m != "__main__" and m.split(".")[0] != "vl2v":
                        mods.add(m)
    return sorted(mods)


# --------------------------------------------------------------------------- worker side
_WORKER: dict[str, Any] = {}


def _init_worker(cfg: Any, specs: list, threads: int, plugins: list[str], features: str | None) -> None:
    import importlib

    os.environ["VL2V_PROGRESS"] = "0"  # one progress bar, the parent's
    torch.set_num_threads(threads)
    for m in plugins:  # spawn gave this process the parent's sys.path, so they import as they did there
        importlib.import_module(m)
    from vl2v.experiment.setup import prepare

    exp = prepare(cfg, specs, lambda *_: None)  # the parent checked cfg and planned the runs: nothing is checked again
    if features:  # the pretrained student's features the parent computed once for every run
        exp.res.load_features(features)
    _WORKER.update(exp=exp)


def _run_job(job: WorkerJob, args_base: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from vl2v.experiment.setup import trainer_for

    trainer = trainer_for(_WORKER["exp"], job.run, args_base, prepaid=job.prepaid)
    return job.index, dict(trainer.run(resume=True).final)


# --------------------------------------------------------------------------- parent side
def run_parallel(cfg: Any, specs: list, jobs: list[WorkerJob], args_base: dict[str, Any], workers: int, threads: int,
                 on_done: Callable[[WorkerJob, dict[str, Any]], None], features: Path | None = None) -> list[dict[str, Any]]:
    """Train ``jobs`` on ``workers`` processes with ``threads`` torch threads each; finals in the jobs' order.
    ``features``: a file of cached student features (SharedResources.save_features) every worker loads."""
    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools have started is unsafe
    out: dict[int, dict[str, Any]] = {}
    by_index = {j.index: j for j in jobs}
    pbar = bar(len(jobs), desc=f"runs ({workers} processes x {threads} thread{'s' if threads > 1 else ''})",
               unit="run")
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=(replace(cfg), list(specs), threads, plugin_modules(), str(features) if features else None))
    try:
        futures = [pool.submit(_run_job, j, args_base) for j in jobs]
        for fut in cf.as_completed(futures):
            try:
                i, final = fut.result()
            except cf.process.BrokenProcessPool as exc:
                raise RuntimeError("a worker process died (out of memory?); finished runs are kept: run the same "
                                   "command again with --jobs 1 (or fewer jobs) to finish the rest") from exc
            out[i] = final
            pbar.update(1)
            on_done(by_index[i], final)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    finally:
        pbar.close()
    pool.shutdown(wait=True)
    return [out[j.index] for j in jobs]
