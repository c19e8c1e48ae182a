"""``vl2v sweep``: datasets x targets x algorithms x hyperparameters x seeds as resumable jobs (:mod:`vl2v.experiment.sweep`).

The options after ``--`` are parsed once with the `vl2v train` parser (no
abbreviations) into an experiment config per dataset; each job is that config
with its own target, algorithm variant and seed, run through the experiment API.
"""

from __future__ import annotations

import argparse

from vl2v.cli.common import CLIError


def job_configurator(train_args: list[str]):
    """``configure(dataset=, data_dir=, data_root=) -> ExperimentConfig`` for `vl2v train` options ``train_args``.

    Refuses unknown or abbreviated options, and the options the sweep sets itself.
    """
    from vl2v.cli.train import SWEEP_OWNED, config_from_args, train_parser

    parser = train_parser()
    parser.exit_on_error = False
    try:
        ns, unknown = parser.parse_known_args(train_args)
    except argparse.ArgumentError as exc:
        raise CLIError(f"bad `vl2v train` option after `--`: {exc}") from None
    if unknown:
        raise CLIError(f"unknown `vl2v train` option(s) after `--`: {' '.join(unknown)} (options must be written in "
                       "full, e.g. --target, not --tar; see `vl2v train --help`)")
    owned = [d for d in SWEEP_OWNED if getattr(ns, d) != parser.get_default(d)]
    if owned:
        raise CLIError(f"{', '.join('--' + d.replace('_', '-') for d in owned)} is set by the sweep itself; pass it as a "
                       "sweep option instead (--datasets, --targets, --algorithms, --seeds, --hparams-seeds, --out, --root)")

    def configure(dataset=None, data_dir=None, data_root=None):
        return config_from_args(argparse.Namespace(**{**vars(ns), "dataset": dataset, "data": data_dir,
                                                      "root": data_root}))

    return configure


def _cmd_sweep(args: argparse.Namespace) -> int:
    from vl2v.experiment.sweep import expand, parse_grid, run_sweep

    train_args = list(args.train_args or [])
    if train_args and train_args[0] == "--":
        train_args = train_args[1:]
    configure = job_configurator(train_args)
    jobs = expand(args.datasets, args.algorithms, args.seeds, args.targets, parse_grid(args.grid), configure, args.root,
                  args.hparams_seeds)
    if args.dry_run:
        for j in jobs:
            hp = f"  hparams seed {j.meta['hparams_seed']}" if args.hparams_seeds else ""
            print(f"{j.id}  {j.meta['dataset']}  target {j.meta['target']}  {j.meta['algorithm']}{hp}  seed {j.meta['seed']}")
        print(f"{len(jobs)} jobs")
        return 0
    slurm = {k: v for k, v in dict(slurm_partition=args.slurm_partition, timeout_min=args.slurm_time,
                                   gpus_per_node=args.slurm_gpus, cpus_per_task=args.slurm_cpus,
                                   slurm_array_parallelism=args.slurm_parallel).items() if v is not None}
    res = run_sweep(jobs, args.out, args.launcher, args.workers, args.threads_per_job, slurm)
    print(f"{res.succeeded} jobs finished, {res.skipped} were already done, {len(res.failed)} failed"
          + (f": {', '.join(res.failed)}" if res.failed else ""))
    print(f"aggregate with: vl2v report {args.out}")
    return 1 if res.failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    # sweep
    q = sub.add_parser("sweep", help="run datasets x targets x algorithms x hyperparameters x seeds as resumable jobs",
                       description="Expand the grid into one `vl2v train` job per run, each with a stable id (a hash of its "
                       "arguments) in OUT/jobs/<id>/. Finished jobs are skipped when the same sweep is launched again; "
                       "interrupted ones resume. Options after `--` are `vl2v train` options for every job (written in full: "
                       "abbreviations are refused; --out, --target, --seed, --trials, --algorithm, --hparams-seed, --dataset, --data and --root "
                       "are set by the sweep). "
                       "Example: vl2v sweep --out runs/sweep --datasets OfflinePACS --algorithms erm_ft adip "
                       "--grid adip.lam=0,0.5,1 --seeds 0 1 2 -- --profile fast")
    q.add_argument("--out", required=True, help="sweep folder")
    q.add_argument("--datasets", nargs="+", default=["OfflinePACS"], help="registered dataset names or ROOT/domain/class/image folders")
    q.add_argument("--root", help="folder holding registered datasets")
    q.add_argument("--algorithms", nargs="+", default=["adip"], help="algorithm specs, e.g. adip kd:temperature=2")
    q.add_argument("--grid", nargs="+", metavar="ALGO.KEY=V1,V2", help="hyperparameter values to sweep, e.g. adip.lam=0,0.25,0.5")
    q.add_argument("--seeds", nargs="+", type=int, default=[0], help="trial seeds (default 0)")
    q.add_argument("--hparams-seeds", nargs="+", type=int, metavar="H",
                   help="random hyperparameter search: one job per draw from each algorithm's search space "
                   "(DomainBed's hparams_seed; 0 = the defaults), e.g. 0 1 2 3; `vl2v report` then picks, per algorithm, "
                   "target and trial seed, the draw with the best training-domain validation accuracy")
    q.add_argument("--targets", nargs="+", help="target domains by name or index (default: every domain)")
    q.add_argument("--launcher", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local: a process pool on this machine; slurm: submitit job arrays; submitit-local: submitit on this machine")
    q.add_argument("--workers", type=int, help="local: parallel jobs (default: one per GPU, or cores // --threads-per-job)")
    q.add_argument("--threads-per-job", type=int, default=1, help="local: torch threads per job (default 1)")
    q.add_argument("--slurm-partition", help="slurm: partition")
    q.add_argument("--slurm-time", type=int, help="slurm: time limit per job in minutes")
    q.add_argument("--slurm-gpus", type=int, help="slurm: GPUs per job")
    q.add_argument("--slurm-cpus", type=int, help="slurm: CPUs per job")
    q.add_argument("--slurm-parallel", type=int, help="slurm: most array jobs running at once")
    q.add_argument("--dry-run", action="store_true", help="print the jobs and exit")
    q.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then `vl2v train` options for every job")
    q.set_defaults(func=_cmd_sweep)
