"""An experiment's runs, resolved once its data is loaded: the algorithm specs, the held-out target domains,
each spec's hyperparameter draw and every (trial seed, target, algorithm) run in the order they are trained."""

from __future__ import annotations

from dataclasses import dataclass

from vl2v.config import ExperimentConfig
from vl2v.errors import ConfigError
from vl2v.experiment.setup import AlgoSpec, Experiment


def target_indices(cfg: ExperimentConfig, domains: list[str]) -> list[int]:
    """The held-out target domains of ``cfg`` (every domain in turn by default), each checked against ``domains``."""
    targets = list(cfg.targets) if cfg.targets is not None else list(range(len(domains)))
    for t in targets:
        if not 0 <= t < len(domains):
            raise ConfigError(f"target {t} out of range: domains are 0..{len(domains) - 1} ({', '.join(domains)})")
    return targets


@dataclass(frozen=True)
class Plan:
    """An experiment resolved once, after its data is loaded: the algorithm specs, the target domains, each
    spec's hyperparameter draw (validated), and every run in the order runs are trained and reported
    (trial seed, then target, then algorithm). :func:`~vl2v.experiment.run.run_experiment` and
    :func:`~vl2v.experiment.run.dry_run` both walk it."""

    specs: list[AlgoSpec]
    targets: list[int]
    draws: dict[AlgoSpec, tuple]
    runs: list[tuple[int, int, AlgoSpec]]  # (trial seed, target, algorithm)


def make_plan(cfg: ExperimentConfig, exp: Experiment) -> Plan:
    """The runs of ``cfg`` on the loaded experiment ``exp``; every draw checked before any work."""
    specs = [AlgoSpec.parse(a) for a in cfg.algorithms]
    targets = target_indices(cfg, exp.data.domains)
    draws = {a: a.drawn(cfg.hparams_seed, exp.dataset_name, cfg.train.schedule) for a in specs}
    for a in specs:
        a.options(cfg.hparams_seed, exp.dataset_name, cfg.train.schedule)  # validate the draw before any work
    runs = [(seed, t, a) for seed in cfg.seeds for t in targets for a in specs]
    return Plan(specs, targets, draws, runs)
