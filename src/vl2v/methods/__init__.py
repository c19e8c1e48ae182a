"""Algorithms: DomainBed-style ``update(minibatches)`` / ``predict(x)``, one file each.

Importing this package registers every algorithm below (see :mod:`vl2v.methods.registry`).
To add one: write ``methods/NAME.py`` with a hyperparameter dataclass and an
``Algorithm`` subclass decorated with ``@register_algorithm``, and import it here.
"""

from vl2v.methods.base import Algorithm, Batch, Stage, TaskContext  # noqa: F401
from vl2v.methods.registry import (  # noqa: F401
                                   ALGORITHMS,
                                   AlgorithmInfo,
                                   create_algorithm,
                                   get_algorithm,
                                   list_algorithms,
                                   make_hparams,
                                   register_algorithm,
)

# the members: importing each registers it (order = `vl2v list algorithms` order)
from vl2v.methods import adip, erm, kd, rise, sd, zeroshot  # noqa: E402,F401  isort: skip
