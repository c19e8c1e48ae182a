"""Teachers: vision-language models reached only through ``embed_images`` / ``embed_texts``.

Each teacher backend registers itself, beside its code, with
:func:`~vl2v.teachers.registry.register_teacher` (its ``--teacher-opt`` options class and its factory); the
registry itself (:mod:`vl2v.teachers.registry`) imports no backend. This package names every backend module
(:data:`BACKENDS`, imported by :func:`_register_backends`; timm's ``models/__init__.py`` pattern, as
:mod:`vl2v.methods`). The registry imports them on its first look-up rather than here on
``import vl2v.teachers``, so importing a light submodule such as :mod:`vl2v.teachers.wire` (the embedding
service's protocol) still does not import torch. To add a backend: write its module with an options class and a
``@register_teacher`` factory, name it in :data:`BACKENDS` and :func:`_register_backends`, and give it a
contract fixture (tests/test_teacher_contract.py).

``Teacher`` and ``TeacherError`` are loaded on first use for the same reason.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vl2v.teachers.registry import TEACHERS, TeacherInfo, create_teacher, list_teachers, register_teacher  # noqa: F401

#: the backend modules, in `vl2v teacher list` order: importing each registers its teacher
BACKENDS = ("vl2v.teachers.conse", "vl2v.teachers.lit", "vl2v.teachers.openclip", "vl2v.teachers.hf",
            "vl2v.teachers.remote", "vl2v.teachers.privileged", "vl2v.teachers.vendors")


def _register_backends() -> None:
    """Import the backend modules (:data:`BACKENDS`); each registers its teacher."""
    from vl2v.teachers import conse, hf, lit, openclip, privileged, remote, vendors  # noqa: F401


TEACHERS.members(_register_backends, BACKENDS)

_LAZY = {
    "Teacher": "vl2v.teachers.base",
    "TeacherError": "vl2v.teachers.base",
}

__all__ = sorted([*_LAZY, "TEACHERS", "TeacherInfo", "create_teacher", "list_teachers", "register_teacher"])

if TYPE_CHECKING:  # pragma: no cover
    from vl2v.teachers.base import Teacher, TeacherError  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
