"""``vl2v train`` and ``vl2v compare``: leave-one-domain-out runs and the table (:mod:`vl2v.experiment.run`).

Flags map one to one onto :class:`vl2v.config.ExperimentConfig`; a profile
(``--profile``, package data) fills the budget and explicit flags override it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vl2v.cli.common import CLIError, parse_kv
from vl2v.config import DEFAULT_ALGORITHMS, ExperimentConfig, apply_profile, profile_names, validated, with_settings
from vl2v.errors import WeightsUnavailableError

#: train flags (argparse dests) that a sweep sets per job; they may not follow `vl2v sweep ... --`
SWEEP_OWNED = ("out", "resume", "overwrite", "dry_run", "json", "target", "seed", "trials", "algorithm", "dataset", "data", "root", "hparams_seed")


#: added to a weights-loading error when the paper profile chose the student or teacher
PAPER_OFFLINE_HINT = (
    "--profile paper trains the paper's student (vit_base_patch16_224, ImageNet weights from timm) with the paper's "
    "teacher (openclip:ViT-B-16:openai); their weights could not be loaded (no network, and not in the local "
    "cache?). Pass them explicitly: local weights with --student-weights FILE and/or "
    "--teacher openclip:ViT-B-16:/path/to/ckpt, or the offline models with "
    "--teacher conse --student efficientnet_lite0 (the paper's budget and protocol, other models).")


#: flags a `--resume` may come with: they change how fast the runs go, not their numbers
RESUME_FLAGS = ("resume", "jobs", "workers", "data_mode", "func", "parser")


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return v


def _check_student_weights(path: str | None) -> None:
    """``--student-weights``: an existing .safetensors file (its header readable) or a torch state dict file."""
    if not path:
        return
    p = Path(path).expanduser()
    if not p.is_file():
        raise CLIError(f"--student-weights {path}: no such file")
    if p.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
        raise CLIError(f"--student-weights {path}: not a weights file; expected .safetensors or a torch state dict "
                       "(.pt, .pth, .bin)")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as f:
                f.keys()
        except Exception as exc:  # safetensors raises its own error types for a bad header
            raise CLIError(f"--student-weights {path}: not a readable safetensors file ({exc})") from None


def _flag_labels() -> dict[str, str]:
    """Config field -> its command-line flag, for error messages."""
    import dataclasses

    from vl2v.config import Schedule, TrainConfig

    names = {f.name for c in (Schedule, TrainConfig, ExperimentConfig) for f in dataclasses.fields(c)}
    return {n: "--" + n.replace("_", "-") for n in names}


def _jobs(text: str) -> str:
    if text == "auto" or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"--jobs takes a number >= 1 or 'auto', not {text!r}")


def config_from_args(args: argparse.Namespace, default_algorithms: tuple[str, ...] = ("adip",)) -> ExperimentConfig:
    """The experiment a `vl2v train`/`compare` command line describes (profile first, then explicit flags).

    ``--student``/``--teacher`` default to None: the profile's (paper: ViT-B/16 and OpenAI CLIP ViT-B/16),
    else :class:`ExperimentConfig`'s (EfficientNet-Lite0 and ConSE); an explicit flag always wins.
    """
    from vl2v.utils.device import check_device

    check_device(args.device)  # first: a device this machine has not is the cheapest mistake to report
    _check_student_weights(args.student_weights)
    cfg = validated(ExperimentConfig, dict(
        dataset=args.dataset, data_dir=args.data, data_root=args.root,
        algorithms=tuple(args.algorithm or default_algorithms),
        seeds=tuple(args.seed) if args.seed else tuple(range(args.trials)), hparams_seed=args.hparams_seed,
        teacher_options=parse_kv(args.teacher_opt, "--teacher-opt"),
        blackbox=not args.white_box, student_pretrained=not args.no_pretrained,
        student_weights=args.student_weights, store=args.store, out_dir=args.out, strict_data=args.strict_data,
        novel_classes=args.novel_classes, novel_fold=args.novel_fold,
        data_mode=args.data_mode, workers=args.workers, jobs=None if args.jobs == "auto" else int(args.jobs),
        threads=args.threads), what="bad option", labels=_flag_labels())
    cfg = apply_profile(cfg, args.profile)
    templates = _templates_from_args(args, cfg)
    flags = dict(steps=args.steps, frozen_steps=args.frozen_steps, lr=args.lr, frozen_lr=args.frozen_lr,
                 freeze_stages=args.freeze_stages, batch_size=args.batch_size, image_size=args.image_size,
                 eval_every=args.eval_every, teacher_mode=args.teacher_mode, device=args.device, views=args.views,
                 data_stream=args.data_stream,
                 templates=templates, swad=True if args.swad else False if args.no_swad else None,
                 amp=args.amp, compile=True if args.compile else None, select_stage=args.select_stage,
                 head_warmup=args.head_warmup,
                 cache_prefix=False if args.no_cache_prefix else None,
                 student=args.student, teacher=args.teacher, max_side=args.max_side,
                 stage_select_min_step=args.stage_select_min_step,
                 prompt_names=args.prompt_names, classnames=args.classnames)
    cfg = with_settings(cfg, {k: v for k, v in flags.items() if v is not None}, what="bad option",
                        labels=_flag_labels())
    from vl2v.data.folder import dataset_domains

    domains = dataset_domains(cfg.dataset, cfg.data_root, cfg.data_dir)  # a missing --data folder: reported now
    if args.target:
        from dataclasses import replace

        from vl2v.experiment.plan import resolve_targets

        cfg = replace(cfg, targets=resolve_targets(args.target, domains))
    return cfg


def _templates_from_args(args: argparse.Namespace, cfg: ExperimentConfig) -> tuple[str, ...] | None:
    """``--template TEXT`` (repeatable) or ``--templates NAME`` (a named set), resolved to the template strings."""
    if args.template and args.templates:
        raise CLIError("--template and --templates exclude each other: give the templates, or a set's name")
    from vl2v.teachers.prompts import template_set, validate_templates

    try:
        if args.templates:
            return template_set(args.templates, cfg.dataset if cfg.data_dir is None else None)
        return validate_templates(args.template) if args.template else None
    except ValueError as exc:
        raise CLIError(str(exc)) from exc


def _max_side(text: str) -> int:
    """``--max-side``: a positive side in pixels, or none/0 (the original resolution; stored as None)."""
    if text.strip().lower() in ("none", "0", "original"):
        return 0
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a side in pixels or 'none', got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a side in pixels or 'none', got {text!r}")
    return v


def train_parser() -> argparse.ArgumentParser:
    """A stand-alone parser of the `vl2v train` flags (the sweep parses the options after `--` with it)."""
    p = argparse.ArgumentParser(prog="vl2v train", allow_abbrev=False, add_help=False)
    _add_train_args(p, "adip", "runs/train")
    return p


def _cmd_train(args: argparse.Namespace, default_algorithms: tuple[str, ...] = ("adip",)) -> int:
    from vl2v.experiment.run import run_experiment
    from vl2v.experiment.setup import check_experiment
    from vl2v.training.distributed import info

    if args.resume:
        _refuse_flags_with_resume(args)
        cfg = _resume_config(args.resume)
        print(f"vl2v: resuming {args.resume} (finished runs are kept, the interrupted one continues from its last checkpoint)")
    else:
        cfg = config_from_args(args, default_algorithms)
        check_experiment(cfg)
        if args.dry_run:
            import json

            from vl2v.experiment.run import dry_run, render_dry_run

            plan = dry_run(cfg, log=lambda s: print(s, file=sys.stderr))
            print(json.dumps(plan, indent=2) if args.json else render_dry_run(plan))
            return 0
        print(f"vl2v: profile {args.profile!r} ({'CPU-sized; --profile paper for the paper settings' if args.profile == 'fast' else 'the VL2V authors settings'}), "
              f"output in {cfg.out_dir}", flush=True)
    try:
        result = run_experiment(cfg, resume=True, overwrite=bool(args.overwrite))
    except WeightsUnavailableError as exc:
        if not args.resume and args.profile == "paper" and (args.student is None or args.teacher is None):
            raise type(exc)(f"{exc}\n{PAPER_OFFLINE_HINT}") from exc
        raise
    if info().is_main:
        print()
        print(result["text"])
        print(f"records, checkpoints and configs: {result['out_dir']}  (aggregate trials with `vl2v report {result['out_dir']}`)")
        try:
            from vl2v.evaluation.html_report import write_html_report
            from vl2v.runs.layout import ExperimentDir

            html = ExperimentDir(result["out_dir"]).report_html
            print(f"HTML report (figures): {write_html_report([result['out_dir']], html)}")
        except Exception as exc:  # the runs are saved; a failed figure must not fail the training job
            print(f"vl2v: warning: could not write the HTML report ({type(exc).__name__}: {exc}); "
                  f"retry with `vl2v report {result['out_dir']}`", file=sys.stderr)
    return 0


def _refuse_flags_with_resume(args: argparse.Namespace) -> None:
    """``--resume OUT`` continues with OUT's saved configuration: a flag that would change a run is refused
    (silently ignoring it would print the saved settings' numbers as if the flag had been applied)."""
    defaults = vars(args.parser.parse_args([]))  # (get_default is wrong for two flags sharing a dest)
    given = [k for k, v in vars(args).items() if k in defaults and k not in RESUME_FLAGS and v != defaults[k]]
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise CLIError(f"--resume continues {args.resume} with its saved configuration; {flags} would change its "
                       "runs: drop them, or start a new --out with the new settings")


def _resume_config(path: str):
    from vl2v.config import from_dict
    from vl2v.errors import ConfigError
    from vl2v.runs.layout import ExperimentDir

    p = Path(path)
    exp_dir = ExperimentDir(p)
    exp = exp_dir.experiment_json
    if not exp_dir.exists():
        raise CLIError(f"{p} is not a vl2v output folder (no experiment.json); --resume takes the --out folder of "
                       "an earlier `vl2v train` or `vl2v compare`")
    try:
        cfg = from_dict(ExperimentConfig, exp_dir.load_config_dict())
    except (KeyError, TypeError, ValueError, ConfigError) as exc:
        raise CLIError(f"{exp} is unreadable or from an incompatible vl2v version: {exc}") from exc
    from dataclasses import replace

    return replace(cfg, out_dir=str(p))


def _cmd_compare(args: argparse.Namespace) -> int:
    # VL2V-SD joins the comparison when the teacher is configured white-box
    return _cmd_train(args, DEFAULT_ALGORITHMS + (("sd",) if args.white_box else ()))


def _add_train_args(q: argparse.ArgumentParser, default_algos: str, default_out: str) -> None:
    """Every `vl2v train`/`compare` flag, in four groups (the order of `--help`)."""
    _add_data_args(q)
    _add_model_args(q, default_algos)
    _add_budget_args(q)
    _add_output_args(q, default_out)


def _add_data_args(q: argparse.ArgumentParser) -> None:
    """The data, its splits and trials, and how runs are loaded and parallelised."""
    g = q.add_argument_group("data")
    g.add_argument("--dataset", default="OfflinePACS", help="registered dataset (default OfflinePACS; see `vl2v list datasets`)")
    g.add_argument("--data", help="a custom ROOT/domain/class/image folder (overrides --dataset)")
    g.add_argument("--root", help="folder holding datasets (default: $VL2V_DATA or ~/.cache/vl2v/datasets)")
    g.add_argument("--target", nargs="+", metavar="DOMAIN", help="target domain(s), by name or index (default: every domain in turn)")
    g.add_argument("--trials", type=_positive, default=1, help="number of trial seeds 0..N-1 (default 1)")
    g.add_argument("--data-mode", choices=["auto", "memory", "stream"], default="auto",
                   help="memory: hold every decoded image (fast); stream: decode from disk in loader workers when needed "
                        "(memory flat in the dataset's size, e.g. DomainNet); auto (default): stream above ~4 GiB decoded")
    g.add_argument("--workers", type=int, help="loader worker processes that decode and render views "
                   "(default: 0 on a CPU, up to 8 with CUDA); results do not depend on it")
    g.add_argument("--jobs", type=_jobs, default=os.environ.get("VL2V_JOBS", "auto"), metavar="N|auto",
                   help="runs trained side by side, each in its own process (default: $VL2V_JOBS, else auto: one per "
                   "CPU core, as memory allows; 1 on a GPU or under torchrun). The teacher is asked first, in this "
                   "process, so no view is paid twice")
    g.add_argument("--threads", type=int, help="torch threads per run (default: the cores divided among the jobs). "
                   "Numbers depend on it (float sums split differently), not on --jobs: it is recorded in every run")
    g.add_argument("--strict-data", action="store_true",
                   help="fail on any data problem (unreadable files, empty classes) instead of skipping and recording it")
    g.add_argument("--seed", type=int, nargs="+", help="explicit trial seeds (overrides --trials)")
    g.add_argument("--novel-classes", type=int, default=0, metavar="K",
                   help="benchmark classes never seen in training: hold K classes out of every training and "
                   "validation split and score ADiP, SD and the teacher's zero-shot on them by their names "
                   "(seen, novel and harmonic-mean accuracy on the target domain). Default 0: train on every class")
    g.add_argument("--novel-fold", type=int, default=0, metavar="F",
                   help="which K classes --novel-classes holds out: fold F of a fixed, seeded rotation over the "
                   "classes (folds 0..ceil(classes/K)-1 hold out every class at least once; default 0)")
    g.add_argument("--hparams-seed", type=int, default=0,
                   help="DomainBed's hyperparameter seed: 0 (default) = each algorithm's defaults; N > 0 = draw N from "
                   "its search space (docs/hparams.md), explicit ALGO:key=value options winning. Recorded in every run, "
                   "part of its random seed and of its folder name (_hpN)")


def _add_model_args(q: argparse.ArgumentParser, default_algos: str) -> None:
    """The algorithms, the teacher (and its prompts) and the student."""
    g = q.add_argument_group("models")
    g.add_argument("--algorithm", nargs="+", metavar="ALGO",
                   help=f"algorithm(s), optionally with hyperparameters, e.g. adip:lam=0.25 (default: {default_algos}; see `vl2v list algorithms`)")
    g.add_argument("--teacher", help="teacher (default: the profile's, paper: openclip:ViT-B-16:openai; else conse, "
                   "offline): conse, openclip:MODEL:TAG|PATH, ... (see `vl2v teacher list`)")
    g.add_argument("--teacher-opt", nargs="+", metavar="KEY=VALUE", help="teacher backend options, e.g. k=5")
    g.add_argument("--white-box", action="store_true", help="give algorithms the teacher object itself (default: black-box, embed functions only)")
    g.add_argument("--template", action="append", help="prompt template with {c}; repeat for an ensemble (default: 'a photo of a {c}')")
    g.add_argument("--templates", metavar="NAME", help="a named template set instead of --template: clip80 (CLIP's 80 "
                   "ImageNet templates), rise (RISE's 7), default, or one of the dataset's prompt file")
    g.add_argument("--prompt-names", choices=["auto", "folder", "curated"], help="class names in the prompts: auto "
                   "(default: curated where the dataset has a prompt file, e.g. OfflinePACS 'bug' -> 'insect'), folder ("
                   "folder names, '_' -> ' ') or curated (the dataset's file in vl2v/data/prompts)")
    g.add_argument("--classnames", metavar="FILE", help="class names for the prompts: JSON {folder: name} or a text "
                   "file with one name per class in (sorted) folder order; overrides --prompt-names")
    g.add_argument("--student", help="student backbone (default: the profile's, paper: vit_base_patch16_224; else "
                   "efficientnet_lite0; see `vl2v list students`)")
    g.add_argument("--student-weights", help="local weights file for the student (.safetensors or torch state dict)")
    g.add_argument("--no-pretrained", action="store_true", help="random student weights")


def _add_budget_args(q: argparse.ArgumentParser) -> None:
    """The profile and every setting of the training budget and data stream it fills in."""
    g = q.add_argument_group("training budget")
    g.add_argument("--profile", choices=profile_names(), default="fast",
                   help="fast: CPU-sized defaults (128px, short schedules, cached teacher views); "
                        "paper: the VL2V authors' settings (224px, 5001 steps per stage, lr 5e-5, online teacher, "
                        "SWAD, original resolution, ViT-B/16 student, CLIP ViT-B/16 teacher)")
    g.add_argument("--steps", type=int, help="steps per fine-tuning stage")
    g.add_argument("--frozen-steps", type=int, help="steps per frozen-backbone stage (linear probe, Align)")
    g.add_argument("--lr", type=float, help="learning rate of fine-tuning stages (Adam)")
    g.add_argument("--frozen-lr", type=float, help="learning rate of frozen-backbone stages")
    g.add_argument("--batch-size", type=int, help="images per source domain per step")
    g.add_argument("--image-size", type=int, help="student input side in pixels")
    g.add_argument("--eval-every", type=int, help="evaluate and checkpoint every N steps")
    g.add_argument("--freeze-stages", type=int, help="keep the first N backbone stages frozen while fine-tuning (speed)")
    g.add_argument("--views", type=int, help="K stored augmented views per training image, replayed by every "
                   "algorithm with the stored data stream (fast: 4; 0: the un-augmented image only)")
    g.add_argument("--data-stream", choices=["auto", "stored", "fresh"], help="what every algorithm trains on, the same "
                   "for all: stored = the K stored views (--views), teacher cached; fresh = a new augmentation each "
                   "step, teacher queried online; auto (default) = stored with --teacher-mode cached, fresh with online")
    g.add_argument("--teacher-mode", choices=["cached", "online"], help="cached: replay stored views; online: query the teacher every step")
    g.add_argument("--swad", action="store_true", help="also report SWAD (LossValley) weight averaging of the last stage "
                   "(on in the paper profile; then the headline table)")
    g.add_argument("--no-swad", action="store_true", help="no SWAD, whatever the profile says")
    g.add_argument("--select-stage", choices=["all", "final"], help="select the checkpoint among the final stage's "
                   "evaluations only (default; ADiP: Distill, as the authors report) or among every stage's")
    g.add_argument("--head-warmup", action="store_true", default=None, help="every fine-tuning algorithm first trains "
                   "its new heads on the frozen backbone for --frozen-steps (ERM-FT then = LP-FT), as ADiP's Align "
                   "does (on in the fast profile)")
    g.add_argument("--no-head-warmup", dest="head_warmup", action="store_false", help="no head warm-up "
                   "(the paper profile: only ADiP and LP-FT have a first stage)")
    g.add_argument("--max-side", type=_max_side, metavar="PX|none", help="shrink images to this shorter side before "
                   "cropping (fast: 256; paper: none = the original resolution)")
    g.add_argument("--stage-select-min-step", type=int, metavar="STEP", help="a non-final stage's (Align's) "
                   "checkpoints compete for its best only from this stage step on (paper: 1000; fast: 0)")
    g.add_argument("--amp", choices=["auto", "off", "bf16"], help="bf16 autocast of forward passes (default auto: on with "
                   "CUDA, off on the CPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the student (pays on GPUs)")
    g.add_argument("--no-cache-prefix", action="store_true", help="run the frozen first --freeze-stages stages every "
                   "step instead of caching their output (same numbers; for benchmarking)")


def _add_output_args(q: argparse.ArgumentParser, default_out: str) -> None:
    """Where the runs go, the teacher store, the device, and resume/dry-run/overwrite."""
    g = q.add_argument_group("output")
    g.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    g.add_argument("--store", help="teacher-embedding store file (default ~/.cache/vl2v/teacher_store.sqlite; 'memory' for none)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto: CUDA when present, else CPU)")
    g.add_argument("--resume", metavar="OUT", help="continue an interrupted `vl2v train`/`compare` output folder "
                   "with its saved configuration (only --jobs, --workers and --data-mode may come with it)")
    g.add_argument("--dry-run", action="store_true", help="train nothing and send nothing to the teacher: print "
                   "how many image and text queries the command would send, given what the teacher store already "
                   "holds, and what they cost at the teacher's price (vendor teachers)")
    g.add_argument("--json", action="store_true", help="with --dry-run: print it as JSON")
    g.add_argument("--overwrite", action="store_true", help="remove the runs already in --out before training "
                   "(without it, a folder whose runs were made with other settings is refused, and finished runs "
                   "with the same settings are reused)")


def register(sub: argparse._SubParsersAction) -> None:
    # train / compare
    q = sub.add_parser("train", help="train algorithm(s) leave-one-domain-out and print the table",
                       description="Train each algorithm on every source-domain combination (one run per target "
                       "domain and trial seed), select checkpoints by training-domain validation, and print "
                       "per-target OOD accuracy, mean and ID accuracy. Finished runs are skipped on a re-run.")
    _add_train_args(q, "adip", "runs/train")
    q.set_defaults(func=_cmd_train, parser=q)
    q = sub.add_parser("compare", help="the main job: zero-shot teacher, ERM (LP, FT), KD, RISE and ADiP on every target",
                       description="Run the comparison (zeroshot, erm_lp, erm_ft, kd, rise, adip; plus sd with "
                       "--white-box) leave-one-domain-out "
                       "and print the table. Defaults: the offline benchmark, the offline ConSE teacher, the "
                       "EfficientNet-Lite0 student and the CPU-sized 'fast' profile.")
    _add_train_args(q, "zeroshot erm_lp erm_ft kd rise adip (+ sd with --white-box)", "runs/main")
    q.set_defaults(func=_cmd_compare, parser=q)
