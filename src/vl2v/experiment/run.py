"""Leave-one-domain-out experiments: every (algorithm, target domain, trial seed) run, then the table.

One :class:`ExperimentConfig` describes the data, the teacher, the student,
the algorithms and the training budget; :func:`run_experiment` trains every
run (skipping finished ones), writes one directory per run and a summary
(``results.md``, ``summary.json``; its text is :func:`vl2v.evaluation.results.render_summary`'s) at the top of
``out_dir``. :func:`dry_run` says what the same command would ask the teacher, and pay, without training.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import torch

from vl2v.config import ExperimentConfig
from vl2v.errors import ConfigError
from vl2v.evaluation.results import render_summary
from vl2v.evaluation.tables import build_tables
from vl2v.experiment.parallel import WorkerJob, resolve_jobs, run_parallel
from vl2v.experiment.plan import Plan, make_plan
from vl2v.experiment.setup import Experiment, check_experiment, prepare, trainer_for
from vl2v.runs.fingerprint import config_diff, describe, run_diff
from vl2v.runs.layout import ExperimentDir
from vl2v.teachers.registry import public_options
from vl2v.utils.device import resolve_device
from vl2v.utils.environment import environment
from vl2v.utils.io import atomic_write_json, atomic_write_text


def check_writable(out: Path) -> None:
    """Fail before any work if the output folder cannot be written (read-only, full, no permission)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".vl2v-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to the output folder {out}: {exc.strerror or exc}. "
                          "Choose another --out, or fix its permissions or free space.") from exc


def _recorded(cfg: ExperimentConfig) -> dict[str, Any]:
    """``cfg`` as ``experiment.json`` records it: JSON values, secret teacher options (an API key) redacted."""
    d = json.loads(json.dumps(asdict(cfg), default=str))
    d["teacher_options"] = public_options(d.get("teacher_options"))
    return d


def check_out_dir(cfg: ExperimentConfig, overwrite: bool = False) -> None:
    """Refuse, before any work, an output folder whose runs were made with settings that change numbers
    (``experiment.json``'s config against ``cfg``): reusing them would print old numbers under the new
    command's header. ``overwrite``: allowed (the old runs are removed later, by :func:`clear_out_dir`)."""
    exp_dir = ExperimentDir(cfg.out_dir)
    if overwrite or not exp_dir.exists():
        return
    try:
        old = exp_dir.load_config_dict()
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{exp_dir.experiment_json} is unreadable ({exc}); choose a new --out, or add --overwrite "
                          "to remove the runs there and start over") from None
    diffs = config_diff(old, _recorded(cfg))
    if diffs:
        raise ConfigError(f"{cfg.out_dir} holds runs made with other settings ({describe(diffs)}); their numbers "
                          f"are not this command's. Choose a new --out, or add --overwrite to remove those runs "
                          f"and start over in {cfg.out_dir}")


def clear_out_dir(out: Path, log: Callable[[str], None] = print) -> None:
    """``--overwrite``: remove the runs and the summary files of an experiment folder (nothing else in it)."""
    import shutil

    exp_dir = ExperimentDir(out)
    runs = exp_dir.find_runs() if out.is_dir() else []
    for run in runs:
        shutil.rmtree(run)
        for parent in run.parents:  # the now empty <algorithm>/target-<i>-<domain>/ folders
            if parent == out or not parent.is_relative_to(out) or any(parent.iterdir()):
                break
            parent.rmdir()
    for p in (exp_dir.experiment_json, exp_dir.results_md, exp_dir.summary_json, exp_dir.report_html):
        p.unlink(missing_ok=True)
    if runs:
        log(f"--overwrite: removed {len(runs)} earlier runs from {out}")


def check_runs_match(exp: "Experiment", runs: list, args_base: dict[str, Any]) -> None:
    """Refuse runs already in the output folder (finished, or interrupted and about to be resumed) whose
    ``config.json`` differs from what this command would record, on the resolved values (device, threads,
    teacher identity, prompt names): the per-run guard behind :func:`check_out_dir`."""
    cfg = exp.cfg
    train = json.loads(json.dumps(asdict(cfg.train), default=str))
    exp_dir = ExperimentDir(Path(cfg.out_dir))
    for r in runs:
        rd = exp_dir.run(r.algorithm, r.hparams, r.target, exp.data.domains, r.trial_seed, r.hparams_seed)
        if not rd.has_config():
            continue
        diffs = run_diff(rd.config(), train, args_base)
        if diffs:
            raise ConfigError(f"{rd.path} was made with other settings ({describe(diffs)}); its numbers are not "
                              f"this command's. Choose a new --out, or add --overwrite to remove the runs in "
                              f"{cfg.out_dir} and start over")


def _args_base(cfg: ExperimentConfig, exp: "Experiment") -> dict[str, Any]:
    """What every run of the experiment records in its ``args`` (the run-level settings; ``threads`` added once
    the job layout is known)."""
    args = {"dataset": exp.dataset_name, "data_dir": str(exp.data.scan.root), "holdout_fraction": cfg.holdout_fraction,
            "teacher": cfg.teacher, "teacher_options": public_options(cfg.teacher_options),
            "teacher_identity": exp.teacher_identity, "student": cfg.student,
            "student_pretrained": cfg.student_pretrained, "student_weights": cfg.student_weights,
            "freeze_bn": cfg.freeze_bn, "views": cfg.views, "view_seed": cfg.view_seed,
            "store_dtype": cfg.store_dtype, "max_side": cfg.max_side}
    if exp.data.novel:  # recorded only for a novel-class benchmark: other runs' records are as before
        args["novel_classes"] = {"count": cfg.novel_classes, "fold": cfg.novel_fold,
                                 "held_out": [exp.data.all_classes[c] for c in exp.data.novel]}
    return args


def _experiment_record(cfg: ExperimentConfig, exp: "Experiment", world_size: int) -> dict[str, Any]:
    """``experiment.json``: the config (secrets redacted), the data it found and the environment."""
    data = exp.data
    return {"config": _recorded(cfg), "dataset": exp.dataset_name, "domains": data.domains,
            "classes": data.all_classes, "teacher": exp.teacher_identity,
            **({"held_out_classes": [data.all_classes[c] for c in data.novel]} if data.novel else {}),
            "data_issues": [{"path": i.path, "reason": i.reason, "kind": "warning" if i.tolerable else "skipped"}
                            for i in data.scan.issues],
            "world_size": world_size, "environment": environment()}


def _start(cfg: ExperimentConfig, overwrite: bool, log: Callable[[str], None]):
    """Checks before any work, the device settings and the distributed set-up; the loaded experiment."""
    from vl2v.training.distributed import init_distributed

    specs = check_experiment(cfg)
    check_out_dir(cfg, overwrite)
    if cfg.train.device.startswith("cuda"):  # TF32 matmuls/convolutions: the usual speed/precision trade on GPUs
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dist = init_distributed(cfg.train.device)
    if not dist.is_main:  # one voice and one writer in data-parallel runs
        log = lambda *_: None  # noqa: E731
    exp = prepare(cfg, specs, log)
    if dist.is_main:
        check_writable(Path(cfg.out_dir))
    return exp, dist, log


def run_experiment(cfg: ExperimentConfig, log: Callable[[str], None] = print, resume: bool = True,
                   overwrite: bool = False) -> dict[str, Any]:
    """Train every run of ``cfg`` (finished runs with the same settings are reused; runs made with other
    settings are refused unless ``overwrite``, which removes them first) and summarise them."""
    cfg = replace(cfg, train=replace(cfg.train, device=resolve_device(cfg.train.device)))  # --device auto
    exp, dist, log = _start(cfg, overwrite, log)
    cfg = exp.cfg
    out = Path(cfg.out_dir)
    exp_dir = ExperimentDir(out)
    plan = make_plan(cfg, exp)
    args_base = _args_base(cfg, exp)
    procs, threads = resolve_jobs(cfg.jobs, cfg.threads, cfg.train.device, len(plan.runs), dist.enabled,
                                  shared_store=exp.res.store is None or exp.res.store.path is not None)
    if procs > 1 and not resume:
        raise ConfigError("--jobs > 1 resumes finished runs; a fresh start of every run needs --jobs 1")
    args_base["threads"] = threads  # a run's numbers depend on its step's thread count (float summation order)
    if dist.is_main and overwrite:
        clear_out_dir(out, log)
    check_runs_match(exp, plan.runs, args_base)
    if dist.is_main:
        atomic_write_json(exp_dir.experiment_json, _experiment_record(cfg, exp, dist.world_size))
    for a in plan.specs:
        if cfg.hparams_seed:
            log(f"hparams seed {cfg.hparams_seed}: {a.label}: "
                + (", ".join(f"{k}={v}" for k, v in plan.draws[a]) or "nothing to draw (defaults)"))
    torch.set_num_threads(threads)
    t0 = time.time()
    if procs == 1:
        finals = _train_here(exp, plan, args_base, resume, log)
    else:
        finals = _train_in_workers(exp, plan, args_base, procs, threads, log)
    tables = build_tables(finals, exp.data.domains)
    text = render_summary(tables, exp, cfg, time.time() - t0, finals)
    if dist.is_main:
        atomic_write_text(exp_dir.results_md, text)
        atomic_write_json(exp_dir.summary_json, {"finals": finals, "wall_time": time.time() - t0})
    return {"finals": finals, "tables": tables, "text": text, "out_dir": str(out)}


def _reporter(exp: "Experiment", log: Callable[[str], None]) -> Callable[[str, int, int, dict[str, Any]], None]:
    """The one line each finished run prints."""

    def report(label: str, t: int, seed: int, f: dict[str, Any]) -> None:
        sel = f.get("selected", {})
        log(f"  {label:<24} target {exp.data.domains[t]:<10} seed {seed}: OOD {100 * sel.get('ood_acc', float('nan')):5.1f}  "
            f"ID {100 * sel.get('id_acc', float('nan')):5.1f}  ({f.get('wall_time', 0):.0f}s)")

    return report


def _train_here(exp: "Experiment", plan: Plan, args_base: dict[str, Any], resume: bool,
                log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every run of ``plan``, one after the other in this process."""
    report = _reporter(exp, log)
    finals = []
    for r in plan.runs:
        f = dict(trainer_for(exp, r, args_base).run(resume=resume).final)
        f["label"] = r.label
        finals.append(f)
        report(r.label, r.target, r.trial_seed, f)
    return finals


def _train_in_workers(exp: "Experiment", plan: Plan, args_base: dict[str, Any], procs: int, threads: int,
                      log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every run of ``plan`` in ``procs`` worker processes; the teacher is paid and the student's caches are
    filled here first."""
    report = _reporter(exp, log)
    log(f"training {len(plan.runs)} runs in {procs} processes x {threads} thread(s); first, in this process and "
        "in the runs' order, the teacher is asked and the pretrained student's cached features are computed")
    # On the runs' own thread count and in their order, as one process would: the teacher's embeddings and
    # the student's pooled features can change in their last bits with the thread count (both seen here),
    # so `--jobs 2 --threads 1` gives the numbers of `--jobs 1 --threads 1`.
    jobs = []
    for k, r in enumerate(plan.runs):
        trainer = trainer_for(exp, r, args_base)
        jobs.append(WorkerJob(k, r, trainer.pay_teacher()))
        trainer.warm_student_caches()
    cache = Path(exp.cfg.out_dir) / ".student-features.safetensors"
    exp.res.save_features(cache)

    def done(job: WorkerJob, f: dict[str, Any]) -> None:
        f["label"] = job.run.label
        report(job.run.label, job.run.target, job.run.trial_seed, f)

    try:
        return run_parallel(exp.cfg, exp.specs, jobs, args_base, procs, threads, done, features=cache)
    finally:
        cache.unlink(missing_ok=True)


def dry_run(cfg: ExperimentConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """What ``run_experiment(cfg)`` would ask the teacher, without asking it or training anything: per algorithm
    the answers its runs need (distinct image views and prompt texts), and in all the queries still to pay
    (distinct over every unfinished run, less what the teacher store already holds), with their cost where the
    teacher has a price (:meth:`vl2v.teachers.base.Teacher.price`). Exact for a cached teacher (the stored views
    are known ahead); an online teacher's training views are drawn fresh every step and are not counted."""
    cfg = replace(cfg, train=replace(cfg.train, device=resolve_device(cfg.train.device)))
    exp = prepare(cfg, check_experiment(cfg), log)
    cfg = exp.cfg
    store = exp.res.store
    plan = make_plan(cfg, exp)
    per_algo: dict[str, dict[str, Any]] = {}
    images: set[tuple[str, str]] = set()
    texts: set[str] = set()
    for r in plan.runs:
        trainer = trainer_for(exp, r, {})
        row = per_algo.setdefault(r.label, {"runs": 0, "finished": 0, "image": 0, "text": 0, "train_images": 0})
        row["runs"] += 1
        if trainer.rd.is_done():  # a finished run is reused: it asks nothing
            row["finished"] += 1
            continue
        keys, prompts = trainer.teacher_keys()
        row["image"] += len(keys)
        row["text"] += len(prompts)
        row["train_images"] += len(trainer.train_indices)
        images |= keys
        texts |= prompts
    out: dict[str, Any] = {"teacher": exp.teacher_identity, "algorithms": per_algo,
                           "online": cfg.train.teacher_mode == "online", "to_pay": {"image": 0, "text": 0}}
    if store is not None:
        known_i, known_t = store.known_images(sorted(images)), store.known_texts(sorted(texts))
        out["needed"] = {"image": len(images), "text": len(texts)}
        out["in_store"] = {"image": len(known_i), "text": len(known_t)}
        out["to_pay"] = {"image": len(images) - len(known_i), "text": len(texts) - len(known_t)}
        price = store.teacher.price()
        if price:
            out["price"] = price
            out["cost"] = round(out["to_pay"]["image"] * price["image"] + out["to_pay"]["text"] * price["text"], 6)
    return out


def render_dry_run(plan: dict[str, Any]) -> str:
    """The dry run as the command line prints it."""
    lines = [f"dry run: nothing was sent to the teacher and nothing was trained (teacher: {plan['teacher']})", "",
             "| Algorithm | runs | finished (reused) | image answers needed | per training image | texts needed |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, r in plan["algorithms"].items():
        per = f"{r['image'] / r['train_images']:.2f}" if r["train_images"] else "-"
        lines.append(f"| {label} | {r['runs']} | {r['finished']} | {r['image']:,} | {per} | {r['text']:,} |")
    lines.append("")
    if "needed" not in plan:
        lines.append("No algorithm asks the teacher: nothing to pay.")
        return "\n".join(lines)
    n, k, p = plan["needed"], plan["in_store"], plan["to_pay"]
    lines.append(f"distinct answers needed by the unfinished runs: {n['image']:,} images, {n['text']:,} texts; "
                 f"already in the teacher store: {k['image']:,} images, {k['text']:,} texts")
    lines.append(f"queries this command will send: {p['image']:,} images, {p['text']:,} texts"
                 + (" (plus one per fresh training view: --teacher-mode online draws them each step, not counted "
                    "here)" if plan["online"] else ""))
    if "price" in plan:
        pr = plan["price"]
        lines.append(f"cost at {pr.get('currency', 'USD')} {pr['image']:g} per image and {pr['text']:g} per text "
                     f"(prices read on {pr.get('read_on', '?')}, {pr.get('source', 'no source')}): "
                     f"{pr.get('currency', 'USD')} {plan['cost']:.2f}")
    else:
        lines.append("this teacher has no price per query (local or self-hosted): the cost is its compute time")
    return "\n".join(lines)
