"""The ``vl2v`` command line. Thin: each subcommand calls one function of the package."""

from __future__ import annotations

import argparse
import errno
import sys
from pathlib import Path

from vl2v import __version__


class CLIError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# --------------------------------------------------------------------------- data
def _cmd_data_list(args: argparse.Namespace) -> int:
    from vl2v.data.registry import default_data_root, list_datasets

    root = Path(args.root) if args.root else default_data_root()
    print(f"{'name':<16} {'domains':<58} {'classes':>7} {'images':>8}  how to get it")
    for spec in list_datasets():
        how = "vl2v data build" if spec.builder else ("vl2v data download" if spec.downloader else "-")
        n = spec.total_images
        present = "  [present]" if (root / spec.subdir).is_dir() else ""
        print(f"{spec.name:<16} {', '.join(spec.domains):<58} {spec.num_classes:>7} {n if n else '?':>8}  {how}{present}")
    print(f"\ndata root: {root}  (set with --root or $VL2V_DATA)")
    return 0


def _cmd_data_download(args: argparse.Namespace) -> int:
    from vl2v.data.registry import get_dataset, default_data_root

    spec = get_dataset(args.name)
    if spec.downloader is None:
        hint = f" It is built locally: run `vl2v data build {spec.name}`." if spec.builder else ""
        raise CLIError(f"dataset {spec.name} has no download.{hint}")
    root = Path(args.root) if args.root else default_data_root()
    folder = spec.downloader(root)
    print(f"{spec.name} is ready in {folder}")
    return 0


def _cmd_data_build(args: argparse.Namespace) -> int:
    from vl2v.data.registry import get_dataset, default_data_root

    spec = get_dataset(args.name)
    if spec.builder is None:
        hint = f" Download it with `vl2v data download {spec.name}`." if spec.downloader else ""
        raise CLIError(f"dataset {spec.name} is not built locally.{hint}")
    root = Path(args.root) if args.root else default_data_root()
    summary = spec.builder(root / spec.subdir, cache_dir=Path(args.cache) if args.cache else None,
                           image_size=args.size, force=args.force)
    print(summary.get("text", summary))
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from vl2v.data.check import check_dataset

    report = check_dataset(name=args.name, root=args.root, data_dir=args.data, strict=args.strict)
    print(report.render())
    return 0 if report.ok else 1


# --------------------------------------------------------------------------- train
def _parse_kv(items: list[str] | None, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise CLIError(f"bad {what} {it!r}: expected key=value")
        k, v = it.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _resolve_targets(values: list[str] | None, domains: list[str]) -> tuple[int, ...] | None:
    if not values:
        return None
    out = []
    for v in values:
        if v.isdigit():
            out.append(int(v))
        elif v in domains:
            out.append(domains.index(v))
        else:
            raise CLIError(f"unknown target domain {v!r}; domains are: "
                           + ", ".join(f"{i}={d}" for i, d in enumerate(domains)))
    return tuple(out)


def _experiment_from_args(args: argparse.Namespace, default_algorithms: tuple[str, ...]):
    from dataclasses import replace

    from vl2v.data.registry import resolve_dataset
    from vl2v.evaluation.protocol import ExperimentConfig, apply_profile

    cfg = ExperimentConfig(dataset=args.dataset, data_dir=args.data, data_root=args.root,
                           algorithms=tuple(args.algorithm or default_algorithms),
                           seeds=tuple(args.seed) if args.seed else tuple(range(args.trials)),
                           teacher=args.teacher, teacher_options=_parse_kv(args.teacher_opt, "--teacher-opt"),
                           blackbox=not args.white_box, student=args.student,
                           student_pretrained=not args.no_pretrained, student_weights=args.student_weights,
                           store=args.store, out_dir=args.out, strict_data=args.strict_data)
    cfg = apply_profile(cfg, args.profile)
    t, s = cfg.train, cfg.train.schedule
    s = replace(s, **{k: v for k, v in dict(steps=args.steps, frozen_steps=args.frozen_steps, lr=args.lr,
                                           frozen_lr=args.frozen_lr, freeze_stages=args.freeze_stages).items()
                      if v is not None})
    t = replace(t, schedule=s, **{k: v for k, v in dict(batch_size=args.batch_size, image_size=args.image_size,
                                                        eval_every=args.eval_every, teacher_mode=args.teacher_mode,
                                                        device=args.device).items() if v is not None})
    if args.swad:
        t = replace(t, swad=True)
    if args.template:
        t = replace(t, templates=tuple(args.template))
    cfg = replace(cfg, train=t)
    if args.views is not None:
        cfg = replace(cfg, views=args.views)
    if args.target:
        spec, folder = resolve_dataset(cfg.dataset if cfg.data_dir is None else None, cfg.data_root, cfg.data_dir)
        domains = list(spec.domains) if spec is not None else sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
        cfg = replace(cfg, targets=_resolve_targets(args.target, domains))
    if t.device == "auto":
        import torch

        cfg = replace(cfg, train=replace(t, device="cuda" if torch.cuda.is_available() else "cpu"))
    return cfg


def _cmd_train(args: argparse.Namespace, default_algorithms: tuple[str, ...] = ("adip",)) -> int:
    from vl2v.evaluation.protocol import run_experiment
    from vl2v.training.distributed import info

    if args.resume:
        cfg = _resume_config(args.resume)
        print(f"vl2v: resuming {args.resume} (finished runs are kept, the interrupted one continues from its last checkpoint)")
    else:
        cfg = _experiment_from_args(args, default_algorithms)
        cfg.validate()
        print(f"vl2v: profile {args.profile!r} ({'CPU-sized; --profile paper for the paper settings' if args.profile == 'fast' else 'the VL2V authors settings'}), "
              f"output in {cfg.out_dir}", flush=True)
    result = run_experiment(cfg, resume=True)
    if info().is_main:
        print()
        print(result["text"])
        print(f"records, checkpoints and configs: {result['out_dir']}  (aggregate trials with `vl2v report {result['out_dir']}`)")
        try:
            from vl2v.evaluation.html_report import write_html_report

            print(f"HTML report (figures): {write_html_report([result['out_dir']], Path(result['out_dir']) / 'report.html')}")
        except Exception as exc:  # the runs are saved; a failed figure must not fail the training job
            print(f"vl2v: warning: could not write the HTML report ({type(exc).__name__}: {exc}); "
                  f"retry with `vl2v report {result['out_dir']}`", file=sys.stderr)
    return 0


def _resume_config(path: str):
    import json

    from vl2v.evaluation.protocol import ExperimentConfig

    p = Path(path)
    exp = p / "experiment.json"
    if not exp.exists():
        raise CLIError(f"{p} is not a vl2v output folder (no experiment.json); --resume takes the --out folder of "
                       "an earlier `vl2v train` or `vl2v compare`")
    try:
        cfg = ExperimentConfig.from_dict(json.loads(exp.read_text())["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CLIError(f"{exp} is unreadable or from an incompatible vl2v version: {exc}") from exc
    from dataclasses import replace

    return replace(cfg, out_dir=str(p))


def _cmd_compare(args: argparse.Namespace) -> int:
    from vl2v.evaluation.protocol import DEFAULT_ALGORITHMS

    # VL2V-SD joins the comparison when the teacher is configured white-box
    return _cmd_train(args, DEFAULT_ALGORITHMS + (("sd",) if args.white_box else ()))


def _cmd_report(args: argparse.Namespace) -> int:
    from vl2v.evaluation.report import build_report

    text = build_report(args.runs, latex=args.latex)
    if args.out:
        from vl2v.utils.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    if args.no_html:
        return 0
    from vl2v.evaluation.html_report import write_html_report

    # default: next to --out, else in the (first) folder of runs; only an explicit --html may fail the command
    html = args.html or (Path(args.out).with_suffix(".html") if args.out else Path(args.runs[0]) / "report.html")
    try:
        path = write_html_report(args.runs, html)
    except OSError as exc:
        if args.html:
            raise CLIError(f"cannot write the HTML report to {html}: {exc}") from exc
        print(f"vl2v: warning: no HTML report ({exc}); choose a place with --html PATH", file=sys.stderr)
        return 0
    print(f"wrote HTML report {path}", file=sys.stdout if args.out else sys.stderr)
    return 0


def _cmd_teachers(args: argparse.Namespace) -> int:
    from vl2v.teachers.catalog import render

    print(render(args.what, args.grep))
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from vl2v.serving import KEYS_FILE, KeysFileError, add_key, confine_writes
    from vl2v.utils.io import vl2v_home

    data_dir = Path(args.data_dir).expanduser() if args.data_dir else vl2v_home() / "serve"
    keys = Path(args.keys).expanduser() if args.keys else data_dir / KEYS_FILE
    confine_writes(data_dir)  # before torch is imported
    from vl2v.serving.service import ServiceConfig, serve

    try:
        if args.new_key:
            token = add_key(keys, args.new_key)
            print(f"new API key {args.new_key!r} added to {keys} (only its SHA-256 is stored). "
                  f"The key, shown once:\n{token}")
            return 0
        cfg = ServiceConfig(data_dir=data_dir, keys_file=keys, max_batch_images=args.max_batch,
                            max_batch_texts=args.max_texts, max_request_bytes=int(args.max_request_mb * 1024 * 1024),
                            max_image_pixels=args.max_image_pixels)
        serve(args.teacher, _parse_kv(args.teacher_opt, "--teacher-opt"), cfg, host=args.host, port=args.port,
              device=args.device, log_level=args.log_level)
    except (KeysFileError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from vl2v.evaluation.sweep import expand, parse_grid, run_sweep

    train_args = list(args.train_args or [])
    if train_args and train_args[0] == "--":
        train_args = train_args[1:]
    for bad in ("--out", "--resume", "--target", "--seed", "--trials", "--algorithm", "--dataset", "--data"):
        if bad in train_args:
            raise CLIError(f"{bad} is set by the sweep itself; pass it as a sweep option instead")
    jobs = expand(args.datasets, args.algorithms, args.seeds, args.targets, parse_grid(args.grid), train_args, args.root)
    if args.dry_run:
        for j in jobs:
            print(f"{j.id}  vl2v {' '.join(j.argv)}")
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


def _cmd_embed(args: argparse.Namespace) -> int:
    import time

    from vl2v.data.folder import scan_folder
    from vl2v.data.registry import resolve_dataset
    from vl2v.teachers.precompute import precompute
    from vl2v.teachers.registry import create_teacher
    from vl2v.teachers.store import TeacherStore, default_store_path
    from vl2v.utils.progress import bar

    spec, folder = resolve_dataset(args.dataset if args.data is None else None, args.root, args.data)
    if not folder.is_dir():
        raise CLIError(f"dataset folder {folder} does not exist")
    scan = scan_folder(folder, verify=False)
    teacher = create_teacher(args.teacher, **_parse_kv(args.teacher_opt, "--teacher-opt"))
    if args.device:
        teacher.to(args.device)
    path = Path(args.store) if args.store else default_store_path()
    store = TeacherStore(teacher, path)
    t0 = time.time()
    pbar = bar(len(scan.items), desc="embedding", unit="img")
    stats = precompute(scan, store, views=args.views, view_seed=args.view_seed, shard_size=args.shard_size,
                       batch_size=args.batch_size, progress=pbar.update)
    pbar.close()
    print(f"{stats.images} images ({stats.decoded} decoded, {stats.skipped} unreadable skipped), {stats.views} views: "
          f"{stats.queries} teacher queries, {stats.hits} already stored; {time.time() - t0:.1f}s; store {path}")
    return 0


# --------------------------------------------------------------------------- export / predict
def _cmd_export(args: argparse.Namespace) -> int:
    from vl2v.serving.export import export_run

    res = export_run(args.run, fmt=args.format, which=args.which, out_dir=args.out, name=args.name)
    m = res.meta
    print(f"wrote {res.model_path}  ({m['algorithm']}, {len(m['classes'])} classes, input [N,3,{m['input']['shape'][-1]},"
          f"{m['input']['shape'][-1]}] RGB in [0,1], head: {m['head']['kind']})")
    print(f"wrote {res.sidecar_path}  (classes, preprocessing, teacher identity, source run)")
    print(f"parity with PyTorch on {m['parity']['images']}: max |logit difference| = {res.max_abs_diff:.2e}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from vl2v.serving.predict import expand_images, format_predictions, load_predictor

    if args.topk < 1:
        raise CLIError(f"--topk must be at least 1, got {args.topk}")
    pred = load_predictor(args.model, which=args.which)
    files = expand_images(args.images)
    if not files:
        raise CLIError("no image files given (folders are searched for images)")
    out = pred.predict_files(files, topk=args.topk)
    if args.json:
        print(json.dumps({"model": pred.source, "kind": pred.kind, "predictions": [p.as_dict() for p in out]}, indent=2))
    else:
        print(format_predictions(out))
    bad = sum(1 for p in out if p.error)
    if bad:
        print(f"vl2v: {bad} of {len(out)} images could not be read", file=sys.stderr)
    return 1 if bad else 0


def _cmd_list(args: argparse.Namespace) -> int:
    what = args.what
    if what in ("algorithms", "all"):
        from vl2v.methods.base import list_algorithms

        print("algorithms:")
        for a in list_algorithms():
            print(f"  {a.name:<12} {a.summary}")
    if what in ("students", "all"):
        from vl2v.students.registry import list_students

        print("students (or any timm model as timm:<name>):")
        for s in list_students():
            print(f"  {s.name:<34} {s.feature_dim:>5}-d  {'offline weights' if s.offline_weights else 'weights need internet or --student-weights':<42} {s.summary}")
    if what in ("teachers", "all"):
        from vl2v.teachers.registry import list_teachers

        print("teachers:")
        for t in list_teachers():
            print(f"  {t.name:<13} {'white-box' if t.white_box else 'black-box':<9} {t.summary}")
    if what in ("datasets", "all"):
        from vl2v.data.registry import list_datasets

        print("datasets (or any ROOT/domain/class/image folder with --data DIR):")
        for d in list_datasets():
            print(f"  {d.name:<16} {len(d.domains)} domains, {d.num_classes:>3} classes: {', '.join(d.domains)}")
    return 0


def _add_train_args(q: argparse.ArgumentParser, default_algos: str, default_out: str) -> None:
    g = q.add_argument_group("data")
    g.add_argument("--dataset", default="OfflinePACS", help="registered dataset (default OfflinePACS; see `vl2v list datasets`)")
    g.add_argument("--data", help="a custom ROOT/domain/class/image folder (overrides --dataset)")
    g.add_argument("--root", help="folder holding datasets (default: $VL2V_DATA or ~/.cache/vl2v/datasets)")
    g.add_argument("--target", nargs="+", metavar="DOMAIN", help="target domain(s), by name or index (default: every domain in turn)")
    g.add_argument("--trials", type=int, default=1, help="number of trial seeds 0..N-1 (default 1)")
    g.add_argument("--strict-data", action="store_true",
                   help="fail on any data problem (unreadable files, empty classes) instead of skipping and recording it")
    g.add_argument("--seed", type=int, nargs="+", help="explicit trial seeds (overrides --trials)")
    g = q.add_argument_group("models")
    g.add_argument("--algorithm", nargs="+", metavar="ALGO",
                   help=f"algorithm(s), optionally with hyperparameters, e.g. adip:lam=0.25 (default: {default_algos}; see `vl2v list algorithms`)")
    g.add_argument("--teacher", default="conse", help="teacher: conse (offline default), openclip:MODEL:TAG|PATH, ... (see `vl2v list teachers`)")
    g.add_argument("--teacher-opt", nargs="+", metavar="KEY=VALUE", help="teacher backend options, e.g. k=5")
    g.add_argument("--white-box", action="store_true", help="give algorithms the teacher object itself (default: black-box, embed functions only)")
    g.add_argument("--template", action="append", help="prompt template with {c}; repeat for an ensemble (default: 'a photo of a {c}')")
    g.add_argument("--student", default="efficientnet_lite0", help="student backbone (default efficientnet_lite0; see `vl2v list students`)")
    g.add_argument("--student-weights", help="local weights file for the student (.safetensors or torch state dict)")
    g.add_argument("--no-pretrained", action="store_true", help="random student weights")
    g = q.add_argument_group("training budget")
    g.add_argument("--profile", choices=["fast", "paper"], default="fast",
                   help="fast: CPU-sized defaults (128px, short schedules, cached teacher views); "
                        "paper: the VL2V authors' settings (224px, 5001 steps per stage, lr 5e-5, online teacher)")
    g.add_argument("--steps", type=int, help="steps per fine-tuning stage")
    g.add_argument("--frozen-steps", type=int, help="steps per frozen-backbone stage (linear probe, Align)")
    g.add_argument("--lr", type=float, help="learning rate of fine-tuning stages (Adam)")
    g.add_argument("--frozen-lr", type=float, help="learning rate of frozen-backbone stages")
    g.add_argument("--batch-size", type=int, help="images per source domain per step")
    g.add_argument("--image-size", type=int, help="student input side in pixels")
    g.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N steps")
    g.add_argument("--freeze-stages", type=int, help="keep the first N backbone stages frozen while fine-tuning (speed)")
    g.add_argument("--views", type=int, help="K stored augmented teacher views per training image (0: un-augmented only)")
    g.add_argument("--teacher-mode", choices=["cached", "online"], help="cached: replay stored views; online: query the teacher every step")
    g.add_argument("--swad", action="store_true", help="also report SWAD (LossValley) weight averaging of the last stage")
    g = q.add_argument_group("output")
    g.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    g.add_argument("--store", help="teacher-embedding store file (default ~/.cache/vl2v/teacher_store.sqlite; 'memory' for none)")
    g.add_argument("--device", help="cpu, cuda, cuda:N or auto (default cpu)")
    g.add_argument("--resume", metavar="OUT", help="continue an interrupted `vl2v train`/`compare` output folder "
                   "with its saved configuration (other options are ignored)")


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vl2v",
        description="Distil a vision-language model into a small, robust image classifier "
        "(VL2V-ADiP, VL2V-SD and baselines, with the DomainBed protocol).",
    )
    p.add_argument("--version", action="version", version=f"vl2v {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    # data
    pd = sub.add_parser("data", help="datasets: list, download, build, check",
                        description="Get and validate datasets (ROOT/domain/class/image folders).")
    sd = pd.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    root_help = "folder holding datasets (default: $VL2V_DATA or ~/.cache/vl2v/datasets)"

    q = sd.add_parser("list", help="list registered datasets")
    q.add_argument("--root", help=root_help)
    q.set_defaults(func=_cmd_data_list)

    q = sd.add_parser("download", help="download a DomainBed dataset (PACS, VLCS, OfficeHome, TerraIncognita, DomainNet)",
                      description="Download a DomainBed dataset from the same sources DomainBed uses, "
                      "apply the same post-processing, and check the image counts.")
    q.add_argument("name", help="dataset name, e.g. PACS")
    q.add_argument("--root", help=root_help)
    q.set_defaults(func=_cmd_data_download)

    q = sd.add_parser("build", help="build the offline benchmark from pinned npm/Debian packages",
                      description="Fetch pinned packages with npm/apt-get into a cache, render, label and "
                      "preprocess the images, and write ROOT/domain/class/image plus manifest and attribution.")
    q.add_argument("name", help="dataset name, e.g. OfflinePACS")
    q.add_argument("--root", help=root_help)
    q.add_argument("--cache", help="package cache folder (default: ~/.cache/vl2v/packages)")
    q.add_argument("--size", type=int, default=224, help="output image side in pixels (default 224)")
    q.add_argument("--force", action="store_true", help="rebuild even if the dataset is already built")
    q.set_defaults(func=_cmd_data_build)

    q = sd.add_parser("check", help="validate a dataset folder and print its counts",
                      description="Validate ROOT/domain/class/image: missing domains, class sets that differ "
                      "across domains, empty classes, unreadable images. Exit 1 if anything is wrong.")
    q.add_argument("name", nargs="?", help="registered dataset name (omit with --data)")
    q.add_argument("--root", help=root_help)
    q.add_argument("--data", help="a custom ROOT/domain/class/image folder to check instead")
    q.add_argument("--strict", action="store_true", help="also fail on skipped (unreadable) files")
    q.set_defaults(func=_cmd_data_check)
    pd.set_defaults(func=lambda a: (pd.print_help(), 2)[1])

    # train / compare
    q = sub.add_parser("train", help="train algorithm(s) leave-one-domain-out and print the table",
                       description="Train each algorithm on every source-domain combination (one run per target "
                       "domain and trial seed), select checkpoints by training-domain validation, and print "
                       "per-target OOD accuracy, mean and ID accuracy. Finished runs are skipped on a re-run.")
    _add_train_args(q, "adip", "runs/train")
    q.set_defaults(func=_cmd_train)
    q = sub.add_parser("compare", help="the main job: zero-shot teacher, ERM (LP, FT), KD, RISE and ADiP on every target",
                       description="Run the comparison (zeroshot, erm_lp, erm_ft, kd, rise, adip; plus sd with "
                       "--white-box) leave-one-domain-out "
                       "and print the table. Defaults: the offline benchmark, the offline ConSE teacher, the "
                       "EfficientNet-Lite0 student and the CPU-sized 'fast' profile.")
    _add_train_args(q, "zeroshot erm_lp erm_ft kd rise adip (+ sd with --white-box)", "runs/main")
    q.set_defaults(func=_cmd_compare)

    # report
    q = sub.add_parser("report", help="aggregate run directories into tables (mean +- SE over trials)",
                       description="Read run directories (or folders containing them) and print DomainBed-style "
                       "tables: OOD accuracy per target domain and average, ID accuracy, mean +- standard error "
                       "over trial seeds, with SWAD rows where present.")
    q.add_argument("runs", nargs="+", help="run directories or folders of runs")
    q.add_argument("--latex", action="store_true", help="also print LaTeX tables")
    q.add_argument("--out", help="write the report to this file instead of printing it")
    q.add_argument("--html", metavar="PATH", help="write the HTML report (figures embedded) to PATH (.html file or folder); "
                   "default: next to --out, else RUNS[0]/report.html")
    q.add_argument("--no-html", action="store_true", help="Markdown tables only, no HTML page")
    q.set_defaults(func=_cmd_report)

    # teachers
    q = sub.add_parser("teachers", help="teacher backends, transformers families and the open_clip catalogue",
                       description="List what --teacher accepts: the backends, the Hugging Face transformers "
                       "families (transformers:HUB_ID or a downloaded folder) and every open_clip model:tag, "
                       "with which are white-box (image tower available to VL2V-SD). See docs/teachers.md.")
    q.add_argument("what", nargs="?", default="all", choices=["all", "backends", "transformers", "openclip"])
    q.add_argument("--grep", metavar="TEXT", help="only rows containing TEXT (case-insensitive), e.g. siglip")
    q.set_defaults(func=_cmd_teachers)

    # serve
    q = sub.add_parser("serve", help="expose a teacher as a pay-per-query HTTP embedding API (keys, metering, idempotent retries)",
                       description="Serve a teacher's image and text embeddings over HTTP (FastAPI on uvicorn) behind "
                       "API keys, metering each key's queries in DATA_DIR/usage.sqlite. Create a key first with "
                       "--new-key NAME. Clients use --teacher remote:http://HOST:PORT. See docs/serving.md.")
    q.add_argument("--teacher", default="conse", help="teacher to serve (default conse; see `vl2v list teachers`)")
    q.add_argument("--teacher-opt", nargs="+", metavar="KEY=VALUE", help="teacher backend options, e.g. k=5")
    q.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; plain HTTP: use a TLS proxy beyond loopback)")
    q.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    q.add_argument("--data-dir", help="the only folder the service writes: usage ledger and stored answers (default ~/.cache/vl2v/serve)")
    q.add_argument("--keys", help="API keys file, lines 'NAME sha256:HEX' (default DATA_DIR/keys.txt)")
    q.add_argument("--new-key", metavar="NAME", help="add a new random API key NAME to the keys file, print it once, and exit")
    q.add_argument("--max-batch", type=int, default=64, help="most images per request (default 64)")
    q.add_argument("--max-texts", type=int, default=256, help="most texts per request (default 256)")
    q.add_argument("--max-request-mb", type=float, default=32.0, help="largest request body in MiB (default 32)")
    q.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="largest image in pixels, checked before decoding (default 4096*4096)")
    q.add_argument("--device", help="device for the teacher, e.g. cuda (default: the backend's)")
    q.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    q.set_defaults(func=_cmd_serve)

    # sweep
    q = sub.add_parser("sweep", help="run datasets x targets x algorithms x hyperparameters x seeds as resumable jobs",
                       description="Expand the grid into one `vl2v train` job per run, each with a stable id (a hash of its "
                       "arguments) in OUT/jobs/<id>/. Finished jobs are skipped when the same sweep is launched again; "
                       "interrupted ones resume. Options after `--` go to every `vl2v train` job. "
                       "Example: vl2v sweep --out runs/sweep --datasets OfflinePACS --algorithms erm_ft adip "
                       "--grid adip.lam=0,0.5,1 --seeds 0 1 2 -- --profile fast")
    q.add_argument("--out", required=True, help="sweep folder")
    q.add_argument("--datasets", nargs="+", default=["OfflinePACS"], help="registered dataset names or ROOT/domain/class/image folders")
    q.add_argument("--root", help="folder holding registered datasets")
    q.add_argument("--algorithms", nargs="+", default=["adip"], help="algorithm specs, e.g. adip kd:temperature=2")
    q.add_argument("--grid", nargs="+", metavar="ALGO.KEY=V1,V2", help="hyperparameter values to sweep, e.g. adip.lam=0,0.25,0.5")
    q.add_argument("--seeds", nargs="+", type=int, default=[0], help="trial seeds (default 0)")
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
    q.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then options for every `vl2v train` job")
    q.set_defaults(func=_cmd_sweep)

    # embed
    q = sub.add_parser("embed", help="precompute teacher embeddings of a dataset into the store (streaming, resumable)",
                       description="Walk a dataset in shards with bounded memory and store the teacher's embedding of "
                       "every image's evaluation view and K augmented views (the views training replays with --views K). "
                       "Interrupted runs resume where they stopped. Pay for a dataset's queries once, before a sweep.")
    q.add_argument("--dataset", default="OfflinePACS", help="registered dataset (default OfflinePACS)")
    q.add_argument("--data", help="a custom ROOT/domain/class/image folder (overrides --dataset)")
    q.add_argument("--root", help="folder holding registered datasets")
    q.add_argument("--teacher", default="conse", help="teacher spec (default conse)")
    q.add_argument("--teacher-opt", nargs="+", metavar="KEY=VALUE", help="teacher backend options")
    q.add_argument("--views", type=int, default=0, help="K augmented views per image besides the evaluation view (default 0)")
    q.add_argument("--view-seed", type=int, default=0, help="seed of the views (training uses 0)")
    q.add_argument("--store", help="teacher store file (default ~/.cache/vl2v/teacher_store.sqlite)")
    q.add_argument("--shard-size", type=int, default=256, help="images held in memory at once (default 256)")
    q.add_argument("--batch-size", type=int, default=64, help="images per teacher query batch (default 64)")
    q.add_argument("--device", help="device for the teacher")
    q.set_defaults(func=_cmd_embed)

    # export / predict
    q = sub.add_parser("export", help="export a run's student (+ head) to ONNX or TorchScript, with a JSON sidecar",
                       description="Write the trained student of a run with its head baked in (ADiP: projection and "
                       "100 x cosine to the teacher's class text embeddings; ERM/KD: linear classifier). Input: float "
                       "RGB images [N,3,S,S] in [0,1] (normalisation inside); output: class logits. The sidecar "
                       "NAME.EXT.json holds class names, preprocessing, teacher identity and the source run.")
    q.add_argument("run", help="a run directory, OUT/<algorithm>/target-<i>-<domain>/seed<s>")
    q.add_argument("--format", default="onnx", help="onnx (default) or torchscript")
    q.add_argument("--which", choices=["selected", "swad"], default="selected",
                   help="the selected checkpoint (default) or the SWAD average")
    q.add_argument("--out", help="output folder (default RUN/export)")
    q.add_argument("--name", default="student", help="file name without extension (default student)")
    q.set_defaults(func=_cmd_export)
    q = sub.add_parser("predict", help="top-k classes for images, from a run, its checkpoint, or an exported model",
                       description="Print the top-k classes (softmax probabilities) of each image. MODEL is a run "
                       "directory or its .safetensors checkpoint (PyTorch), an exported .onnx file (onnxruntime) or "
                       "TorchScript .pt file (each with its sidecar JSON).")
    q.add_argument("model", help="run directory, model.safetensors, student.onnx or student.pt")
    q.add_argument("images", nargs="+", help="image files or folders of images")
    q.add_argument("--topk", type=int, default=5, help="classes to print per image (default 5)")
    q.add_argument("--which", choices=["selected", "swad"], default="selected",
                   help="for a run directory: the selected checkpoint (default) or the SWAD average")
    q.add_argument("--json", action="store_true", help="print JSON instead of text")
    q.set_defaults(func=_cmd_predict)

    # list
    q = sub.add_parser("list", help="list algorithms, students, teachers and datasets")
    q.add_argument("what", nargs="?", default="all", choices=["all", "algorithms", "students", "teachers", "datasets"])
    q.set_defaults(func=_cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    from vl2v.data.download import DownloadError
    from vl2v.data.folder import FolderError
    from vl2v.registry import UnknownNameError
    from vl2v.errors import ConfigError
    from vl2v.teachers.base import QueryBudgetExceeded

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except QueryBudgetExceeded as exc:
        print(f"vl2v: teacher query budget exhausted: {exc}\n"
              "Everything the teacher already answered is kept in the teacher store; raise the budget and run "
              "the same command again (finished runs are skipped, cached queries are not repeated).", file=sys.stderr)
        return 3
    except DownloadError as exc:
        print(f"vl2v: download failed: {exc}", file=sys.stderr)
        return 1
    except (CLIError, FolderError, UnknownNameError, FileNotFoundError, ConfigError) as exc:
        print(f"vl2v: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"vl2v: error: cannot write{where}: {exc.strerror or exc}. Files written before were not touched "
              "(every checkpoint is written to a temporary file and renamed only when complete): the last good "
              "checkpoint is intact. Free space or fix permissions, then continue with `vl2v train --resume OUT`.",
              file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("vl2v: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `vl2v report ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
