"""What every run of an experiment shares, resolved once: the algorithm specs and configuration checks, the
loaded data, teacher store and student template (:class:`Experiment`), and the trainer of one run.

:mod:`vl2v.experiment.run` (the experiment loop), :mod:`vl2v.experiment.plan` (its runs) and
:mod:`vl2v.experiment.parallel` (its worker processes) all build on this module, so none imports another's internals.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from vl2v.config import ExperimentConfig
from vl2v.data.dataset import DomainData, load_domain_data
from vl2v.data.loader import default_workers
from vl2v.data.registry import resolve_dataset
from vl2v.errors import ConfigError
from vl2v.methods import get_algorithm, make_hparams
from vl2v.methods.search import random_hparams
from vl2v.runs.layout import ExperimentDir
from vl2v.runs.summary import label as make_label
from vl2v.training.loop import Trainer
from vl2v.training.resources import SharedResources
from vl2v.training.spec import RunSpec
from vl2v.utils.device import resolve_device


@dataclass(frozen=True)
class AlgoSpec:
    """``name`` or ``name:key=value,key=value`` (e.g. ``adip:lam=0.25``)."""

    name: str
    hparams: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "AlgoSpec":
        name, _, rest = text.partition(":")
        info = get_algorithm(name.strip())
        hp: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            if "=" not in part:
                raise ConfigError(f"bad algorithm option {part!r} in {text!r}: expected key=value")
            k, v = part.split("=", 1)
            hp[k.strip()] = v.strip()
        make_hparams(info.hparams_cls, hp, info.name)  # validate now, before any work starts
        return cls(info.name, tuple(sorted(hp.items())))

    @property
    def label(self) -> str:
        return make_label(self.name, self.hparams)

    @staticmethod
    def extend(text: str, options: dict[str, str]) -> str:
        """The algorithm written ``text`` with ``options`` added, written as a user would (the sweep's grid
        points): ``adip`` + lam=0.5 -> ``adip:lam=0.5``; ``adip:lam=0`` + prototypes=etf ->
        ``adip:lam=0,prototypes=etf``. The result is checked by :meth:`parse`."""
        extra = ",".join(f"{k}={v}" for k, v in options.items())
        out = text if not extra else f"{text},{extra}" if ":" in text else f"{text}:{extra}"
        AlgoSpec.parse(out)
        return out

    def drawn(self, hparams_seed: int, dataset: str | None = None, schedule: Any = None) -> tuple[tuple[str, Any], ...]:
        """The draw of ``hparams_seed`` from the algorithm's search space, less the keys given explicitly
        (explicit options win); ``()`` for seed 0. A run's hyperparameters: defaults <- drawn <- ``hparams``."""
        explicit = {k for k, _ in self.hparams}
        draw = random_hparams(self.name, hparams_seed, dataset, schedule)
        return tuple(sorted((k, v) for k, v in draw.items() if k not in explicit))


def check_experiment(cfg: ExperimentConfig) -> list[AlgoSpec]:
    """Everything about ``cfg`` that can be checked before loading data: algorithms and their
    hyperparameters, student and teacher names (field types and ranges were checked on construction)."""
    specs = [AlgoSpec.parse(a) for a in cfg.algorithms]
    if not specs:
        raise ConfigError("no algorithms given")
    from vl2v.students.registry import STUDENTS

    if not cfg.student.startswith("timm:"):
        STUDENTS.entry(cfg.student)
    from vl2v.teachers.registry import TeacherSpec, teacher_info

    tspec = TeacherSpec.parse(cfg.teacher, cfg.teacher_options)
    if _needs_teacher(specs) and teacher_info(tspec.backend).experiment_bound:
        if cfg.targets is None or len(cfg.targets) != 1 or len(cfg.seeds) != 1:
            raise ConfigError(f"teacher {tspec.backend!r} is trained on one experiment's splits (a target domain's "
                              "validation split, one trial seed's sources): give exactly one --target and one --seed")
    cfg.train.validate()
    if cfg.train.data_stream_kind == "fresh" and cfg.train.teacher_mode == "cached":
        needs = [s.label for s in specs if get_algorithm(s.name).uses_teacher_images and get_algorithm(s.name).needs_training]
        if needs:
            raise ConfigError(f"--data-stream fresh draws a new augmentation every step, but {', '.join(needs)} "
                              "learn(s) from the teacher's embedding of each view and --teacher-mode cached has "
                              "only the stored views: use --teacher-mode online (the teacher sees every fresh view), "
                              "or --data-stream stored (every algorithm replays the same K stored views)")
    if cfg.novel_fold and not cfg.novel_classes:
        raise ConfigError("--novel-fold picks which classes --novel-classes holds out: give --novel-classes K too")
    if cfg.novel_classes and cfg.data_dir is None and cfg.dataset is not None:
        from vl2v.data.registry import get_dataset

        check_novel(cfg, get_dataset(cfg.dataset).num_classes)
    if cfg.classnames and not Path(cfg.classnames).expanduser().is_file():
        raise ConfigError(f"--classnames file {cfg.classnames} does not exist")
    if cfg.prompt_names == "curated" and not cfg.classnames and cfg.data_dir is None:
        from vl2v.teachers.prompts import curated_names

        try:
            curated_names(cfg.dataset)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return specs


def check_novel(cfg: ExperimentConfig, num_classes: int) -> list[int]:
    """The classes ``cfg`` holds out of training (``--novel-classes``/``--novel-fold``), checked against the
    dataset's ``num_classes``; ``[]`` when it holds none."""
    if not cfg.novel_classes:
        return []
    from vl2v.data.splits import novel_classes

    try:
        return novel_classes(num_classes, cfg.novel_classes, cfg.novel_fold)
    except ValueError as exc:
        raise ConfigError(f"--novel-classes {cfg.novel_classes} --novel-fold {cfg.novel_fold}: {exc}") from None


@dataclass
class Experiment:
    """Loaded data, teacher store and student template shared by all runs of an experiment."""

    cfg: ExperimentConfig  # prompt names resolved (train.class_names)
    specs: list[AlgoSpec]  # the algorithms, parsed and checked (check_experiment)
    data: DomainData
    res: SharedResources
    make_student: Callable[[], Any]
    student_key: tuple
    dataset_name: str
    teacher_identity: str | None
    teacher: Any = None  # the raw teacher (white-box algorithms copy its image encoder)
    _by_seed: dict[int, DomainData] = field(default_factory=dict, repr=False)  # data_for's splits per trial seed

    def teacher_encoder(self):
        return self.teacher.image_encoder() if self.teacher is not None else None

    def data_for(self, seed: int) -> DomainData:
        """The images with trial ``seed``'s splits (made once per seed)."""
        if seed not in self._by_seed:
            self._by_seed[seed] = self.data if seed == self.data.trial_seed else self.data.with_seed(seed)
        return self._by_seed[seed]


def _needs_teacher(specs: list[AlgoSpec]) -> bool:
    return any(get_algorithm(s.name).needs_teacher for s in specs)


def _load_data(cfg: ExperimentConfig, log: Callable[[str], None]) -> tuple[str, DomainData, int]:
    """The experiment's dataset: its name, its images with the first trial seed's splits (held-out classes
    removed for the novel-class benchmark) and the loader workers that read them."""
    spec, folder = resolve_dataset(cfg.dataset if cfg.data_dir is None else None, cfg.data_root, cfg.data_dir)
    if not folder.is_dir():
        how = ""
        if spec is not None:
            how = (f" Build it with `vl2v data build {spec.name}`" if spec.builder else
                   f" Download it with `vl2v data download {spec.name}`") + (f" --root {cfg.data_root}" if cfg.data_root else "") + "."
        raise FileNotFoundError(f"dataset folder {folder} does not exist.{how}")
    name = spec.name if spec is not None else folder.name
    from vl2v.data.folder import scan_folder

    t0 = time.time()
    scan = scan_folder(folder, verify=False)
    novel = check_novel(cfg, len(scan.classes))  # before any image is read
    workers = cfg.workers if cfg.workers is not None else default_workers(resolve_device(cfg.train.device))
    data = load_domain_data(folder, trial_seed=cfg.seeds[0], holdout_fraction=cfg.holdout_fraction,
                            max_side=cfg.max_side, strict=cfg.strict_data, scan=scan, mode=cfg.data_mode,
                            workers=workers)
    if novel:
        data = data.holding_out(novel)
        log(f"novel classes (fold {cfg.novel_fold}): {', '.join(data.scan.classes[c] for c in novel)} held out of "
            f"every training and validation split; students train on {', '.join(data.classes)}")
    for issue in data.scan.issues:
        log(f"  data: {issue}")
    if data.scan.issues:
        log(f"data: {len(data.scan.issues)} problems: {len(data.scan.skipped)} files skipped, "
            f"{sum(i.tolerable for i in data.scan.issues)} warnings (listed above and in experiment.json; "
            f"--strict-data fails instead)")
    log(f"data: {name} at {folder}: {len(data.bank)} images ({'streamed from disk' if data.bank.streamed else 'in memory'}, "
        f"{workers} loader workers), domains {data.domains}, "
        f"{len(data.classes)} classes ({time.time() - t0:.1f}s)")
    return name, data, workers


def prepare(cfg: ExperimentConfig, specs: list[AlgoSpec], log: Callable[[str], None] = print) -> Experiment:
    """Load what every run of ``cfg`` shares: its data, teacher and store, and the student template; ``specs``
    are ``cfg``'s algorithms as :func:`check_experiment` returned them (nothing is checked again here). The
    experiment's config comes back with its prompt names resolved (:func:`with_prompt_names`)."""
    name, data, workers = _load_data(cfg, log)
    store = None
    identity = None
    raw_teacher = None
    device = torch.device(resolve_device(cfg.train.device))
    if _needs_teacher(specs):
        from vl2v.teachers.registry import TeacherSpec, create_teacher, teacher_info
        from vl2v.teachers.store import TeacherStore, default_store_path

        t0 = time.time()
        if teacher_info(TeacherSpec.parse(cfg.teacher, cfg.teacher_options).backend).experiment_bound:
            teacher = _bound_teacher(cfg, data, name, device, log)
        else:
            teacher = create_teacher(cfg.teacher, blackbox=cfg.blackbox, **cfg.teacher_options)
            teacher.to(device)
        white = [s.name for s in specs if get_algorithm(s.name).needs_white_box]
        if white:
            if cfg.blackbox or not teacher.white_box:
                raise ConfigError(f"{', '.join(white)} needs a white-box teacher: pass --white-box with a teacher whose "
                                  f"weights are available (conse, openclip, ...); {cfg.teacher!r} is "
                                  f"{'configured black-box' if cfg.blackbox else 'black-box'}")
            raw_teacher = teacher
        path = None if cfg.store == "memory" else Path(cfg.store) if cfg.store else default_store_path()
        store = TeacherStore(teacher, path, dtype=cfg.store_dtype)
        identity = teacher.identity()
        log(f"teacher: {identity} ({time.time() - t0:.1f}s); store: {path or 'in memory'}")

    from vl2v.students.registry import create_student

    template = None
    if any(get_algorithm(s.name).has_student and get_algorithm(s.name).uses_registry_student for s in specs):
        torch.manual_seed(0)  # random-weight students (--no-pretrained) are the same in every process
        template = create_student(cfg.student, pretrained=cfg.student_pretrained, weights=cfg.student_weights,
                                  freeze_bn=cfg.freeze_bn)
        log(f"student: {cfg.student} ({template.weights}), {template.feature_dim}-d features, "
            f"{cfg.train.image_size}px input")

    def make_student():
        s = copy.deepcopy(template)
        s.image_size = cfg.train.image_size
        return s

    res = SharedResources(data=data, store=store, views=cfg.views, view_seed=cfg.view_seed, device=device,
                          workers=workers)
    key = (cfg.student, template.weights if template else None, cfg.train.image_size)
    exp = Experiment(cfg, specs, data, res, make_student, key, name, identity, raw_teacher)
    exp.cfg = with_prompt_names(cfg, exp)
    return exp


def _bound_teacher(cfg: ExperimentConfig, data: DomainData, dataset: str, device: torch.device, log):
    """A teacher trained on this experiment's own splits (the privileged diagnostic), bound to its one target
    and trial seed before it answers anything; black-box wrapped afterwards when the experiment is."""
    from vl2v.teachers.blackbox import BlackBoxTeacher
    from vl2v.teachers.privileged import bind_to_experiment
    from vl2v.teachers.prompts import class_prompt_names
    from vl2v.teachers.registry import create_teacher

    raw = create_teacher(cfg.teacher, blackbox=False, **cfg.teacher_options)
    raw.to(device)
    names = class_prompt_names(data.all_classes, prompt_names(cfg, data.all_classes, dataset))
    if data.seen is not None:
        names = [names[c] for c in data.seen]
    assert cfg.targets is not None
    bind_to_experiment(raw, data, cfg.targets[0], names, cfg.train.templates, log)
    return BlackBoxTeacher(raw) if cfg.blackbox else raw


def prompt_names(cfg: ExperimentConfig, classes: list[str], dataset: str) -> tuple[str, ...] | None:
    """The prompt name of each of ``classes`` under ``cfg``'s ``prompt_names``/``classnames``; None for the
    folder names (the runs' prompts are then exactly those of earlier versions)."""
    from vl2v.teachers.prompts import prompt_file, resolve_class_names

    mode = cfg.prompt_names
    if mode == "auto":
        mode = "curated" if cfg.data_dir is None and prompt_file(dataset) is not None else "folder"
    if mode == "folder" and not cfg.classnames:
        return None
    try:
        return tuple(resolve_class_names(classes, mode, dataset, cfg.classnames))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def with_prompt_names(cfg: ExperimentConfig, exp: Experiment) -> ExperimentConfig:
    """``cfg`` with ``train.class_names`` resolved from ``prompt_names``/``classnames`` for every class of the
    folder (held-out classes included; left None for the folder names: the runs' prompts are then exactly those
    of earlier versions). ``auto``: a registered dataset's curated names where it has a prompt file; a custom
    folder keeps its folder names."""
    names = prompt_names(cfg, exp.data.all_classes, exp.dataset_name)
    return cfg if names is None else replace(cfg, train=replace(cfg.train, class_names=names))


def trainer_for(exp: Experiment, rs: RunSpec, args_base: dict[str, Any],
                prepaid: dict[str, float] | None = None) -> Trainer:
    """The trainer of the planned run ``rs`` (:func:`vl2v.experiment.plan.make_plan`), in its run folder, on the
    images with its trial seed's splits."""
    cfg = exp.cfg
    run_dir = ExperimentDir(Path(cfg.out_dir)).run(rs.algorithm, rs.hparams, rs.target, exp.data.domains,
                                                  rs.trial_seed, rs.hparams_seed).path
    return Trainer(rs, cfg.train, exp.res, exp.make_student, run_dir, args_base, exp.student_key,
                   data=exp.data_for(rs.trial_seed), teacher_encoder=exp.teacher_encoder, prepaid=prepaid)
