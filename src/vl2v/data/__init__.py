"""Data layer: dataset registry, folder scanning and validation, splits, transforms.

Importing this package registers every built-in dataset (the registry itself,
:mod:`vl2v.data.registry`, imports none). To add a dataset: register a
:class:`~vl2v.data.registry.DatasetSpec` in a module of this package (see
``domainbed.py``) and import that module here.
"""

from vl2v.data.registry import DATASETS, DatasetSpec, get_dataset, list_datasets, register_dataset  # noqa: F401

# the members: importing each registers its datasets
from vl2v.data import domainbed, offline  # noqa: E402,F401  isort: skip
