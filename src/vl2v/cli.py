"""The ``vl2v`` command line. Thin: each subcommand calls one function of the package."""

from __future__ import annotations

import argparse
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
                           store=args.store, out_dir=args.out)
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

    cfg = _experiment_from_args(args, default_algorithms)
    cfg.validate()
    print(f"vl2v: profile {args.profile!r} ({'CPU-sized; --profile paper for the paper settings' if args.profile == 'fast' else 'the VL2V authors settings'}), "
          f"output in {cfg.out_dir}", flush=True)
    result = run_experiment(cfg)
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


def _cmd_compare(args: argparse.Namespace) -> int:
    from vl2v.evaluation.protocol import DEFAULT_ALGORITHMS

    return _cmd_train(args, DEFAULT_ALGORITHMS)


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
        for name, meta in list_teachers():
            print(f"  {name:<10} {'white-box' if meta.get('white_box') else 'black-box':<9} {meta.get('summary', '')}")
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
    q = sub.add_parser("compare", help="the main job: zero-shot teacher, ERM (LP, FT), KD and ADiP on every target",
                       description="Run the comparison (zeroshot, erm_lp, erm_ft, kd, adip) leave-one-domain-out "
                       "and print the table. Defaults: the offline benchmark, the offline ConSE teacher, the "
                       "EfficientNet-Lite0 student and the CPU-sized 'fast' profile.")
    _add_train_args(q, "zeroshot erm_lp erm_ft kd adip", "runs/main")
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

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DownloadError as exc:
        print(f"vl2v: download failed: {exc}", file=sys.stderr)
        return 1
    except (CLIError, FolderError, UnknownNameError, FileNotFoundError, ConfigError) as exc:
        print(f"vl2v: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vl2v: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `vl2v report ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
