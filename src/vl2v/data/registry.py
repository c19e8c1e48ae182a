"""The dataset registry: DomainBed's five benchmarks, the offline benchmark, custom folders.

A :class:`DatasetSpec` says what a dataset should look like on disk (domains
in DomainBed's sorted order, class count, expected image counts), where it
lives under ``--root`` and how to obtain it (``download`` for DomainBed's
datasets, ``build`` for the offline benchmark). Any folder of the form
``ROOT/domain/class/image`` also loads as a custom dataset via
:func:`resolve_dataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from vl2v.registry import Registry
from vl2v.utils.io import vl2v_home


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    domains: tuple[str, ...]  # sorted, as DomainBed orders environments
    num_classes: int
    subdir: str  # folder name under --root
    description: str = ""
    expected_images: dict[str, int] | None = None  # per domain, after post-processing
    # downloader(root) -> dataset folder; builder(dest, **options) -> summary dict
    downloader: Callable[..., Path] | None = None
    builder: Callable[..., dict[str, Any]] | None = None
    # DomainBed's training budget for the dataset (steps per stage, checkpoint frequency); the paper
    # profile takes it where it differs from the profile's (vl2v/configs/profiles.toml: dataset_budget)
    steps: int = 5001
    checkpoint_freq: int = 200
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_images(self) -> int | None:
        return sum(self.expected_images.values()) if self.expected_images else None


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    DATASETS.register(spec.name)(spec)
    return spec


def get_dataset(name: str) -> DatasetSpec:
    return DATASETS.get(name)


def list_datasets() -> list[DatasetSpec]:
    return [e.obj for e in DATASETS.entries()]


def default_data_root() -> Path:
    """``$VL2V_DATA`` or ``$VL2V_HOME/datasets``."""
    env = os.environ.get("VL2V_DATA")
    return Path(env).expanduser() if env else vl2v_home() / "datasets"


def resolve_dataset(name: str | None = None, root: str | os.PathLike[str] | None = None,
                    data_dir: str | os.PathLike[str] | None = None) -> tuple[DatasetSpec | None, Path]:
    """Return ``(spec, folder)`` for a registered dataset name or a custom folder.

    ``data_dir`` (a ``ROOT/domain/class/image`` folder) wins and gives ``spec=None``.
    """
    if data_dir is not None:
        return None, Path(data_dir).expanduser()
    if name is None:
        raise ValueError("give a dataset name or --data DIR")
    spec = get_dataset(name)
    base = Path(root).expanduser() if root is not None else default_data_root()
    return spec, base / spec.subdir
