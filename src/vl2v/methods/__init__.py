"""Algorithms: DomainBed-style ``update(minibatches)`` / ``predict(x)``, one file each."""

from vl2v.methods.base import ALGORITHMS, Algorithm, Batch, Stage, TaskContext, create_algorithm, list_algorithms  # noqa: F401
