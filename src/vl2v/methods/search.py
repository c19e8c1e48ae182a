"""Random hyperparameter search, as DomainBed's ``hparams_registry.random_hparams``.

Each algorithm's hyperparameter class declares its search space once, next to its
defaults, as a classmethod ``search_space(dataset=None) -> {field: distribution}``
built from the small vocabulary below. :func:`random_hparams` draws one setting:

* ``hparams_seed == 0`` -> ``{}``: the class defaults (DomainBed's ``default_hparams``);
* otherwise each field is drawn with its own ``numpy`` RNG seeded by
  ``seed_hash(hparams_seed, algorithm, field)`` (DomainBed seeds each hyperparameter by
  its name too), so a draw is reproducible from its seed, independent of the global RNG
  state, and adding a field to a space leaves the other fields' draws unchanged.

Learning rates are drawn as **multipliers of the run's schedule** (:class:`Scaled`):
``Scaled("lr", LogUniform(0.2, 5))`` is ``m * schedule.lr`` with ``log10 m`` uniform,
so the same space suits every profile (``paper``: lr 5e-5, ``fast``: 2e-4). Around
the paper's 5e-5 that is 1e-5 .. 2.5e-4, about DomainBed's absolute ``10**U(-5, -3.5)``.
Drawn floats are rounded to 4 significant digits (readable in records, and
re-enterable as ``algo:key=value``). ``steps`` fields are never searched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from vl2v.data.splits import seed_hash


def _round(x: float) -> float:
    return float(f"{x:.4g}")


@dataclass(frozen=True)
class Uniform:
    lo: float
    hi: float

    def sample(self, rng: np.random.RandomState) -> float:
        return _round(rng.uniform(self.lo, self.hi))

    def __str__(self) -> str:
        return f"Uniform({self.lo:g}, {self.hi:g})"


@dataclass(frozen=True)
class LogUniform:
    """``10 ** Uniform(log10 lo, log10 hi)``."""

    lo: float
    hi: float

    def sample(self, rng: np.random.RandomState) -> float:
        return _round(10 ** rng.uniform(math.log10(self.lo), math.log10(self.hi)))

    def __str__(self) -> str:
        return f"LogUniform({self.lo:g}, {self.hi:g})"


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]

    def __init__(self, options) -> None:
        object.__setattr__(self, "options", tuple(options))

    def sample(self, rng: np.random.RandomState) -> Any:
        return self.options[int(rng.randint(len(self.options)))]

    def __str__(self) -> str:
        return f"Choice({list(self.options)})"


@dataclass(frozen=True)
class Scaled:
    """A multiple of the run's schedule value ``key`` (a :class:`~vl2v.config.Schedule` field, e.g. ``lr``)."""

    key: str
    factor: Union[Uniform, LogUniform, Choice]

    def sample(self, rng: np.random.RandomState, schedule: Any = None) -> float:
        from vl2v.config import Schedule

        base = float(getattr(schedule if schedule is not None else Schedule(), self.key))
        return _round(self.factor.sample(rng) * base)

    def __str__(self) -> str:
        return f"{self.factor} x schedule {self.key}"


Distribution = Union[Uniform, LogUniform, Choice, Scaled]

#: The searched values of a distillation weight λ (ADiP's and SD's ``lam``): the authors' 0.1-0.9 range
#: on a grid that also holds both ends, 0 (no teacher image term) and 1 (no text term), so a search can
#: select either; a continuous draw would never land on them.
LAMBDA_GRID: tuple[float, ...] = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)


def search_space(algorithm: str, dataset: str | None = None) -> dict[str, Distribution]:
    """The algorithm's search space (``{}`` when its hyperparameter class declares none)."""
    from vl2v.methods.registry import get_algorithm

    cls = get_algorithm(algorithm).hparams_cls
    fn = getattr(cls, "search_space", None)
    return dict(fn(dataset)) if fn is not None else {}


def random_hparams(algorithm: str, hparams_seed: int, dataset: str | None = None, schedule: Any = None) -> dict[str, Any]:
    """One draw from ``algorithm``'s search space; ``{}`` (the defaults) for ``hparams_seed == 0``.

    ``schedule`` (a :class:`~vl2v.config.Schedule`; default: the paper's) resolves :class:`Scaled`
    learning rates. Only the drawn fields are returned; the others keep their defaults.
    """
    from vl2v.methods.registry import get_algorithm

    name = get_algorithm(algorithm).name
    if hparams_seed == 0:
        return {}
    out: dict[str, Any] = {}
    for key, dist in sorted(search_space(name, dataset).items()):
        rng = np.random.RandomState(seed_hash(hparams_seed, name, key))
        out[key] = dist.sample(rng, schedule) if isinstance(dist, Scaled) else dist.sample(rng)
    return out
