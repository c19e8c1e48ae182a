"""Student backbones: name -> (module, feature size, preprocessing).

Importing this package registers the built-in students (:mod:`vl2v.students.zoo`).
"""

from vl2v.students.registry import STUDENTS, Student, create_student, list_students, register_student  # noqa: F401

from vl2v.students import zoo  # noqa: E402,F401  isort: skip
