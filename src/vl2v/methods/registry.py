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
    #: needs a teacher at all (image or text embeddings)
    needs_teacher: bool = False
    #: the teacher's weights: the algorithm copies its image encoder (VL2V-SD)
    needs_white_box: bool = False
    #: False: evaluated as is (teacher zero-shot)
    needs_training: bool = True
    #: False: no student network (nothing to export or predict with)
    has_student: bool = True
    #: False: the algorithm builds its own student (VL2V-SD copies the teacher)
    uses_registry_student: bool = True


ALGORITHMS: Registry[AlgorithmInfo] = Registry("algorithm")


def register_algorithm(name: str, hparams_cls: type, summary: str, **flags: bool) -> Callable[[type], type]:
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


def create_algorithm(name: str, ctx: "TaskContext", student: "Student | None",
                     overrides: dict[str, Any] | None = None) -> "Algorithm":
    info = get_algorithm(name)
    return info.cls(ctx, student, make_hparams(info.hparams_cls, overrides, info.name))
