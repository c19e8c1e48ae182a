"""The one configuration layer: typed dataclasses validated by pydantic, profiles as package data.

Every option of a run lives in one of the dataclasses below (or, for an
algorithm's own hyperparameters, in a dataclass next to the algorithm made with
the same :func:`config_dataclass`; so are a teacher backend's options, the LiT
build's ``BuildConfig``, the service's ``ServiceConfig`` and the augmentation's
``AugConfig``). Each field declares its type and range once;
pydantic checks them when the object is built, so ``lam=1.5`` or
``batch_size="garbage"`` fail at once with a :class:`ConfigError` naming the
field, instead of running with a silently coerced value.

The CLI builds these objects from flags (every field is a flag), ``experiment.json``
stores them (``dataclasses.asdict``) and :func:`from_dict` reads them back.
Named profiles (``fast``, ``paper``) and the per-dataset budgets of the paper
profile are data, in ``vl2v/configs/profiles.toml``, as open_clip keeps its
model configs in JSON files.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import field, replace
from importlib import resources
from typing import Annotated, Any, Literal

import tomllib
from pydantic import Field

from vl2v.errors import ConfigError

# the layer's mechanism lives in vl2v.utils.configclass (below data/, which uses it too: config.py imports
# data/, so data/ cannot import config.py); it is the config layer's, and imported from here everywhere else
from vl2v.utils.configclass import (  # noqa: F401  (re-exported)
    Fraction,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    config_dataclass,
    from_dict,
    validated,
)

#: CLIP's default prompt: "a photo of a {c}"
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {c}",)


# --------------------------------------------------------------------------- run configuration
@config_dataclass(frozen=True)
class Schedule:
    """Steps and learning rates per stage kind (the run's budget; algorithms may override)."""

    steps: NonNegInt = 5001  # each fine-tuning stage (backbone trainable)
    lr: NonNegFloat = 5e-5
    frozen_steps: NonNegInt = 5001  # each frozen-backbone stage (linear probe, Align)
    frozen_lr: NonNegFloat = 5e-5
    weight_decay: NonNegFloat = 0.0
    freeze_stages: NonNegInt = 0  # early backbone stages kept frozen while fine-tuning (speed)
    # every fine-tuning algorithm first trains its new heads on the frozen backbone for `frozen_steps` at
    # `frozen_lr`, with its own loss (ERM-FT's classifier: then ERM-FT is LP-FT; KD's classifier; RISE's
    # projection and classifier), as ADiP's Align and LP-FT's probe do: the same warm-up for all
    head_warmup: bool = False


@config_dataclass
class SWADConfig:
    """LossValley settings (Cha et al., 2021); the paper's values are the defaults."""

    n_converge: PosInt = 3
    n_tolerance: PosInt = 6
    tolerance_ratio: NonNegFloat = 0.3


@config_dataclass
class TrainConfig:
    schedule: Schedule = field(default_factory=Schedule)
    batch_size: PosInt = 32  # per source domain
    eval_every: PosInt = 200
    image_size: Annotated[int, Field(ge=16)] = 224  # student input side
    teacher_mode: Literal["cached", "online"] = "cached"  # cached: K stored views; online: query every step
    # what every algorithm of a comparison trains on, the same for all (see `data_stream_kind`): "stored" = the K
    # stored views of each image (the identity view when K = 0) replayed by every algorithm, ERM included;
    # "fresh" = a new augmentation per image and step for every algorithm (a teacher is then queried online);
    # "auto" = stored with a cached teacher, fresh with an online one
    data_stream: Literal["auto", "stored", "fresh"] = "auto"
    swad: bool = False
    swad_cfg: SWADConfig = field(default_factory=SWADConfig)
    eval_source_in: bool = False  # also evaluate the sources' training ("in") splits
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    # the name put into each template per class, in the dataset's (sorted folder) class order; None: the folder
    # names with "_" -> " " (vl2v.teachers.prompts.class_name). Filled from --prompt-names/--classnames.
    class_names: tuple[str, ...] | None = None
    # a checkpoint of a non-final stage (ADiP's Align, LP-FT's probe) is a candidate for that stage's best only
    # from this stage step on (the stage's last evaluation always is); 0: every evaluation (the authors' stage-1
    # scripts save only from --model_save on: 1000 for the ViT-B/16 student, 100 for the others)
    stage_select_min_step: NonNegInt = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    eval_batch_size: PosInt = 128
    save_checkpoints: bool = True
    # compute the output of the student's frozen first `freeze_stages` stages once per image/view and train and
    # evaluate only the rest (exactly the same numbers; needs a student that declares its stages' forward pass)
    cache_prefix: bool = True
    # model selection among the evaluations of "all" stages, or of the "final" stage only (multi-stage algorithms)
    select_stage: Literal["all", "final"] = "final"
    # mixed precision: bf16 autocast of forward passes and losses; auto = on with CUDA, off on the CPU
    amp: Literal["auto", "off", "bf16"] = "auto"
    # torch.compile the student's forward, and the rest-of-network pass that steps starting from a cached frozen prefix
    # (cache_prefix) run (pays on GPUs; ~1.1x on a CPU, after minutes of compiling)
    compile: bool = False

    def validate(self) -> None:
        """Range checks run on construction; this re-checks a copy changed with ``dataclasses.replace``."""
        validated(TrainConfig, dataclasses.asdict(self))
        if self.data_stream == "stored" and self.teacher_mode == "online":
            raise ConfigError("--data-stream stored replays stored views, but --teacher-mode online queries the "
                              "teacher on fresh views: use --teacher-mode cached, or --data-stream fresh")

    @property
    def data_stream_kind(self) -> Literal["stored", "fresh"]:
        """The data stream ``auto`` resolves to: stored views with a cached teacher, fresh views with an online one."""
        if self.data_stream != "auto":
            return self.data_stream
        return "fresh" if self.teacher_mode == "online" else "stored"


DEFAULT_ALGORITHMS: tuple[str, ...] = ("zeroshot", "erm_lp", "erm_ft", "kd", "rise", "adip")


@config_dataclass
class ExperimentConfig:
    """A leave-one-domain-out experiment: data, teacher, student, algorithms and budget."""

    dataset: str | None = "OfflinePACS"
    data_dir: str | None = None  # a custom ROOT/domain/class/image folder instead of a registered dataset
    data_root: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    targets: tuple[NonNegInt, ...] | None = None  # None: every domain in turn
    seeds: tuple[int, ...] = (0,)
    hparams_seed: NonNegInt = 0  # recorded in every run (DomainBed's hparams_seed); 0 = the defaults
    teacher: str = "conse"
    teacher_options: dict[str, Any] = field(default_factory=dict)
    blackbox: bool = True  # black-box methods see the teacher only through embed_images/embed_texts
    student: str = "efficientnet_lite0"
    student_pretrained: bool = True
    student_weights: str | None = None
    freeze_bn: bool = True
    views: NonNegInt = 0  # K augmented teacher views per training image (0: the un-augmented image)
    view_seed: int = 0
    store: str | None = None  # teacher store file; None: ~/.cache/vl2v/teacher_store.sqlite; "memory": no file
    store_dtype: Literal["float16", "float32"] = "float16"
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    # images are shrunk to this shorter side before any crop; None: kept at their original resolution
    # (flags and profiles write 0 for None: TOML has no null)
    max_side: PosInt | None = 256
    # prompt names: "folder" (folder names, "_" -> " "), or "curated" (vl2v/data/prompts/<dataset>.json), or
    # "auto" (curated for a registered dataset with a prompt file, else folder);
    # `classnames` (a file: JSON {folder: name} or one name per line in class order) overrides either
    prompt_names: Literal["auto", "folder", "curated"] = "auto"
    classnames: str | None = None
    # memory: hold every decoded image; stream: decode from disk when needed (memory flat in the dataset's
    # size); auto: stream when the decoded images would exceed ~4 GiB
    data_mode: Literal["auto", "memory", "stream"] = "auto"
    workers: NonNegInt | None = None  # loader processes decoding/rendering views; None: 0 on CPU, up to 8 with CUDA
    # runs trained side by side in worker processes; None: auto (one per core on a CPU, 1 on a GPU / under
    # torchrun). The command line's default is auto; this API's is 1 (every run in the calling process)
    jobs: PosInt | None = 1
    # torch threads of each run's step; None: the cores divided among the jobs (all of torch's default with one job)
    threads: PosInt | None = None
    strict_data: bool = False
    # a benchmark of classes never seen in training: hold `novel_classes` classes out of every training and
    # validation split (fold `novel_fold` of a fixed rotation over the classes, vl2v.data.splits.novel_classes)
    # and score the students with text heads on them by their names; 0: every class is trained on
    novel_classes: NonNegInt = 0
    novel_fold: NonNegInt = 0
    out_dir: str = "runs/experiment"
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- profiles (package data)
@functools.cache
def _profiles_file() -> dict[str, Any]:
    text = resources.files("vl2v.configs").joinpath("profiles.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def profile_names() -> list[str]:
    return list(_profiles_file())


def profile_values(name: str, dataset: str | None = None) -> dict[str, Any]:
    """The flat settings of profile ``name``.

    A profile with ``dataset_budget = true`` takes a registered dataset's own DomainBed
    budget where it differs (its ``steps`` per stage, evaluated every ``checkpoint_freq``).
    """
    profiles = _profiles_file()
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r}; choose from {', '.join(profiles)}")
    p = dict(profiles[name])
    if p.pop("dataset_budget", False) and dataset is not None:
        from vl2v.data.registry import get_dataset

        spec = get_dataset(dataset)
        if spec.steps != p["steps"]:
            p.update(steps=spec.steps, frozen_steps=spec.steps, eval_every=spec.checkpoint_freq)
    return p


_SCHEDULE_KEYS = {f.name for f in dataclasses.fields(Schedule)}
_TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)} - {"schedule"}
_EXPERIMENT_KEYS = {f.name for f in dataclasses.fields(ExperimentConfig)} - {"train"}


#: settings whose value 0 stands for None (TOML has no null): ``max_side = 0`` keeps the original resolution
NONE_IS_ZERO = frozenset({"max_side"})


def with_settings(cfg: ExperimentConfig, settings: dict[str, Any], what: str | None = None,
                  labels: dict[str, str] | None = None) -> ExperimentConfig:
    """``cfg`` with flat settings (``steps``, ``batch_size``, ``views``, ...) placed where they belong.

    Unknown names are refused; every value is validated. ``max_side = 0`` means None (no shrinking).
    ``what``/``labels``: how an error names the settings (the command line: "bad option", ``{"lr": "--lr"}``).
    """
    sched, train, top = {}, {}, {}
    for k, v in settings.items():
        if k in NONE_IS_ZERO and v == 0 and not isinstance(v, bool):
            v = None
        if k in _SCHEDULE_KEYS:
            sched[k] = v
        elif k in _TRAIN_KEYS:
            train[k] = v
        elif k in _EXPERIMENT_KEYS:
            top[k] = v
        else:
            raise ConfigError(f"unknown setting {k!r}")
    t = cfg.train
    if sched:
        t = replace(t, schedule=validated(Schedule, {**dataclasses.asdict(t.schedule), **sched}, what, labels=labels))
    if train:
        t = validated(TrainConfig, {**dataclasses.asdict(t), "schedule": t.schedule, **train}, what, labels=labels)
    d = {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, **top, "train": t}
    return validated(ExperimentConfig, d, what, labels=labels)


def apply_profile(cfg: ExperimentConfig, profile: str) -> ExperimentConfig:
    """``cfg`` with the profile's settings (and, for a registered dataset, its budget in that profile)."""
    dataset = cfg.dataset if cfg.data_dir is None else None
    return with_settings(cfg, profile_values(profile, dataset))
