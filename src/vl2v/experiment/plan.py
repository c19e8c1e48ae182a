"""An experiment's runs, resolved once its data is loaded (:func:`make_plan`): the algorithm specs, the held-out
target domains, each spec's hyperparameter draw and final validated values, and every run as the
:class:`~vl2v.training.spec.RunSpec` the trainer receives, in the order runs are trained and reported.

Everything about a run is decided here and nowhere after: the run path (:mod:`vl2v.experiment.run`), the
parallel workers (:mod:`vl2v.experiment.parallel`), the dry run and the trainer read the plan's run specs
and check nothing again. Checks that need no data come first, in
:func:`vl2v.experiment.setup.check_experiment`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vl2v.config import ExperimentConfig
from vl2v.errors import ConfigError
from vl2v.experiment.setup import AlgoSpec, Experiment
from vl2v.training.spec import RunSpec, resolve_hparams


def resolve_targets(values: list[str] | None, domains: list[str]) -> tuple[int, ...] | None:
    """Target domains as written (``--target``, a sweep's targets): names or indices into ``domains``; None
    for none given (every domain in turn)."""
    if not values:
        return None
    listing = ", ".join(f"{i}={d}" for i, d in enumerate(domains))
    out = []
    for v in values:
        if v.isdigit():
            if int(v) >= len(domains):
                raise ConfigError(f"--target {v}: target {v} out of range: domains are {listing}")
            out.append(int(v))
        elif v in domains:
            out.append(domains.index(v))
        else:
            raise ConfigError(f"unknown target domain {v!r}; domains are: {listing}")
    return tuple(out)


def target_indices(cfg: ExperimentConfig, domains: list[str]) -> list[int]:
    """The held-out target domains of ``cfg`` (every domain in turn by default), each checked against ``domains``."""
    if len(domains) < 2:
        raise ConfigError(f"leave-one-domain-out needs at least 2 domains; the dataset has {len(domains)}")
    targets = list(cfg.targets) if cfg.targets is not None else list(range(len(domains)))
    for t in targets:
        if not 0 <= t < len(domains):
            raise ConfigError(f"target {t} out of range: domains are 0..{len(domains) - 1} ({', '.join(domains)})")
    return targets


@dataclass(frozen=True)
class Plan:
    """An experiment resolved once, after its data is loaded: the algorithm specs, the target domains, each
    spec's hyperparameter draw, and every run in the order runs are trained and reported (trial seed, then
    target, then algorithm), each with its final validated hyperparameters (:attr:`RunSpec.values`)."""

    specs: list[AlgoSpec]
    targets: list[int]
    draws: dict[AlgoSpec, tuple]
    runs: list[RunSpec]


def make_plan(cfg: ExperimentConfig, exp: Experiment) -> Plan:
    """The runs of ``cfg`` on the loaded experiment ``exp``; every draw merged and validated here, once,
    before any work (defaults <- drawn <- explicit options)."""
    specs = exp.specs
    targets = target_indices(cfg, exp.data.domains)
    draws = {a: a.drawn(cfg.hparams_seed, exp.dataset_name, cfg.train.schedule) for a in specs}
    values = {a: resolve_hparams(a.name, draws[a], a.hparams) for a in specs}
    runs = [RunSpec(a.name, t, seed, cfg.hparams_seed, a.hparams, draws[a], values[a])
            for seed in cfg.seeds for t in targets for a in specs]
    return Plan(specs, targets, draws, runs)
