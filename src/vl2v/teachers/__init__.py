"""Teachers: vision-language models reached only through ``embed_images`` / ``embed_texts``.

The names below are loaded on first use, so importing a light submodule such as
:mod:`vl2v.teachers.wire` (the embedding service's protocol) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "Teacher": "vl2v.teachers.base",
    "TeacherError": "vl2v.teachers.base",
    "TEACHERS": "vl2v.teachers.registry",
    "TeacherInfo": "vl2v.teachers.registry",
    "create_teacher": "vl2v.teachers.registry",
    "list_teachers": "vl2v.teachers.registry",
    "register_teacher": "vl2v.teachers.registry",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from vl2v.teachers.base import Teacher, TeacherError  # noqa: F401
    from vl2v.teachers.registry import TEACHERS, TeacherInfo, create_teacher, list_teachers, register_teacher  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
