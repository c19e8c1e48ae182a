"""Deterministic per-domain in/out splits, DomainBed's convention.

DomainBed splits every environment with
``split_dataset(env, int(len(env) * holdout_fraction), seed_hash(trial_seed, env_i))``:
a ``numpy.random.RandomState(seed)`` shuffle of ``range(len(env))``; the first
``n_out`` shuffled indices are the "out" (validation) split, the rest "in".
``seed_hash`` is the MD5 of ``str(args)``. We reproduce both exactly, so for the
same file order (see :mod:`vl2v.data.folder`) the splits match DomainBed's and
are identical on every machine (no dependence on Python's hash seed or torch).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


def seed_hash(*args: object) -> int:
    """Derive an integer seed from arguments (DomainBed's ``misc.seed_hash``)."""
    args_str = str(args)
    return int(hashlib.md5(args_str.encode("utf-8")).hexdigest(), 16) % (2**31)


@dataclass(frozen=True)
class DomainSplit:
    domain: int
    in_idx: tuple[int, ...]  # indices into the domain's item list ("in", 80%)
    out_idx: tuple[int, ...]  # "out" (20%), used for validation


def split_indices(n: int, holdout_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Return ``(in_idx, out_idx)`` for a domain of ``n`` items."""
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    n_out = int(n * holdout_fraction)
    keys = list(range(n))
    np.random.RandomState(seed).shuffle(keys)
    return sorted(keys[n_out:]), sorted(keys[:n_out])


def domain_split(domain: int, n: int, trial_seed: int, holdout_fraction: float = 0.2) -> DomainSplit:
    in_idx, out_idx = split_indices(n, holdout_fraction, seed_hash(trial_seed, domain))
    return DomainSplit(domain, tuple(in_idx), tuple(out_idx))


#: the seed of the class order that novel-class folds rotate over (fixed: a fold names the same classes on
#: every machine and in every trial; the held-out names are recorded in every run's config)
NOVEL_FOLD_SEED = 0


def novel_classes(num_classes: int, count: int, fold: int, seed: int = NOVEL_FOLD_SEED) -> list[int]:
    """The ``count`` classes that fold ``fold`` holds out of training: a seeded shuffle of the classes, cut into
    consecutive groups of ``count`` that wrap around, so folds ``0 .. ceil(C / count) - 1`` hold out every class
    at least once. Sorted class indices. ValueError when fewer than 2 classes would be left to train on, or
    ``fold`` is past the last fold."""
    if count < 1:
        raise ValueError(f"novel classes: need at least 1 class to hold out, got {count}")
    if num_classes - count < 2:
        raise ValueError(f"novel classes: holding out {count} of {num_classes} classes leaves fewer than 2 to "
                         f"train on; hold out at most {num_classes - 2}")
    folds = novel_fold_count(num_classes, count)
    if not 0 <= fold < folds:
        raise ValueError(f"novel fold {fold} out of range: holding out {count} of {num_classes} classes gives "
                         f"folds 0..{folds - 1}")
    order = list(range(num_classes))
    np.random.RandomState(seed).shuffle(order)
    return sorted(order[(fold * count + j) % num_classes] for j in range(count))


def novel_fold_count(num_classes: int, count: int) -> int:
    """How many folds it takes to hold out every class once (``ceil(C / count)``)."""
    return -(-num_classes // count)
