"""The algorithm registry: name -> :class:`AlgorithmInfo` (class, hyperparameters, capabilities).

This module imports no algorithm. ``vl2v/methods/__init__.py`` imports every
algorithm module, each of which registers itself with :func:`register_algorithm`,
so ``from vl2v.methods import get_algorithm`` always sees the full list (timm's
``models/__init__.py`` + ``_registry.py`` pattern). Everything the training loop
and the protocol need to know about an algorithm is a flag on its info, never a
test on its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from vl2v.config import validated
from vl2v.errors import ConfigError
from vl2v.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from vl2v.methods.base import Algorithm, TaskContext
    from vl2v.students.registry import Student


@dataclass(frozen=True)
class AlgorithmInfo:
    name: str
    cls: type
    hparams_cls: type
    summary: str
    #: trains on the teacher's image embeddings of the training views (Batch.t_img)
    uses_teacher_images: bool = False
    #: needs a teacher at all (image or text embeddings): the task context's text classifier and embedding size
    needs_teacher: bool = False
    #: embeds phrases of its own with the teacher's text encoder (the task context's ``prompts``: RISE's anchors)
    uses_teacher_text: bool = False
    #: the teacher's weights: the algorithm copies its image encoder (VL2V-SD)
    needs_white_box: bool = False
    #: False: evaluated as is (teacher zero-shot)
    needs_training: bool = True
    #: False: no student network (nothing to export or predict with)
    has_student: bool = True
    #: False: the algorithm builds its own student (VL2V-SD copies the teacher)
    uses_registry_student: bool = True
    #: the hyperparameter weighting the image-embedding term against the text term (ADiP's ``lam``): the HTML
    #: report's lambda-sweep figure plots accuracy against it (None: no such figure for this algorithm)
    lambda_hparam: str | None = None
    #: the HTML report's mistakes grid shows this algorithm's run (default options) when there is one: the
    #: method this tool is about (ADiP)
    headline: bool = False


ALGORITHMS: Registry[AlgorithmInfo] = Registry("algorithm")


def register_algorithm(name: str, hparams_cls: type, summary: str, **flags: Any) -> Callable[[type], type]:
    """Class decorator: register an :class:`~vl2v.methods.base.Algorithm` subclass with its capability flags.

    The flags are also set on the class, so an instance answers ``algo.uses_teacher_images``.
    """

    def deco(cls: type) -> type:
        info = AlgorithmInfo(name, cls, hparams_cls, summary, **flags)
        cls.name = name
        cls.info = info
        for k in ("uses_teacher_images", "needs_training", "has_student", "uses_registry_student"):
            setattr(cls, k, getattr(info, k))
        ALGORITHMS.register(name)(info)
        return cls

    return deco


def get_algorithm(name: str) -> AlgorithmInfo:
    return ALGORITHMS.get(name)


def list_algorithms() -> list[AlgorithmInfo]:
    return [e.obj for e in ALGORITHMS.entries()]


def make_hparams(hparams_cls: type, overrides: dict[str, Any] | None = None, algorithm: str | None = None) -> Any:
    """An algorithm's hyperparameters from string/number overrides (``adip:lam=0.25``), validated."""
    return validated(hparams_cls, dict(overrides or {}), what=algorithm or hparams_cls.__name__, noun="hyperparameter")


def check_teacher(info: AlgorithmInfo, ctx: "TaskContext") -> None:
    """Raise :class:`~vl2v.errors.ConfigError` when ``ctx`` lacks a part of the teacher the algorithm's flags
    ask for (``needs_teacher``/``uses_teacher_images``: text classifier and embedding size;
    ``uses_teacher_text``: text embeddings; ``needs_white_box``: the image encoder). The one teacher guard:
    algorithms assume what their flags declare."""
    parts: list[tuple[str, bool]] = []  # (what, present)
    if info.needs_teacher or info.uses_teacher_images or info.uses_teacher_text or info.needs_white_box:
        parts += [("text classifier", ctx.text_classifier is not None), ("embedding size", ctx.teacher_dim is not None)]
    if info.uses_teacher_text:
        parts.append(("text embeddings", ctx.prompts is not None))
    if info.needs_white_box:
        parts.append(("image encoder", ctx.teacher_encoder is not None))
    missing = [what for what, present in parts if not present]
    if not missing:
        return
    needs = ", ".join(what for what, _ in parts)
    if info.needs_white_box:
        raise ConfigError(f"{info.name} needs a white-box teacher ({needs}; missing: {', '.join(missing)}): use a "
                          "teacher whose weights are available (conse, openclip, transformers) and pass --white-box")
    raise ConfigError(f"{info.name} needs a teacher ({needs}; missing: {', '.join(missing)})")


def create_algorithm(name: str, ctx: "TaskContext", student: "Student | None",
                     overrides: dict[str, Any] | None = None, *, hparams: Any = None) -> "Algorithm":
    """The algorithm ``name`` for a task: its hyperparameters ``hparams`` (final and validated: a run's
    :attr:`~vl2v.training.spec.RunSpec.values`), else made from ``overrides`` (validated here); the teacher parts
    its flags ask for checked (:func:`check_teacher`), then built. Every algorithm is created here."""
    info = get_algorithm(name)
    if hparams is None:
        hparams = make_hparams(info.hparams_cls, overrides, info.name)
    check_teacher(info, ctx)
    return info.cls(ctx, student, hparams)
