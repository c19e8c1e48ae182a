"""Teachers: vision-language models reached only through ``embed_images`` / ``embed_texts``."""

from vl2v.teachers.base import Teacher, TeacherError  # noqa: F401
from vl2v.teachers.registry import TEACHERS, create_teacher, list_teachers  # noqa: F401
