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
