"""Student backbones: name -> (module, feature size, preprocessing)."""

from vl2v.students.registry import STUDENTS, Student, create_student, list_students  # noqa: F401
