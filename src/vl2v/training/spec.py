"""One run of an experiment, as the trainer receives it (:class:`RunSpec`), resolved by the experiment's plan
(:func:`vl2v.experiment.plan.make_plan`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from vl2v.methods import get_algorithm, make_hparams
from vl2v.runs.layout import label as make_label


def resolve_hparams(algorithm: str, drawn: tuple[tuple[str, Any], ...], hparams: tuple[tuple[str, Any], ...]) -> Any:
    """An algorithm's final hyperparameters, validated: its defaults, then the draw ``drawn``, then the explicit
    options ``hparams`` over it (the one place this order is written)."""
    info = get_algorithm(algorithm)
    return make_hparams(info.hparams_cls, {**dict(drawn), **dict(hparams)}, info.name)


@dataclass(frozen=True)
class RunSpec:
    """Algorithm ``algorithm`` on target domain ``target``, trial ``trial_seed``, hyperparameter seed
    ``hparams_seed``. ``values``: the algorithm's hyperparameters, final and validated (defaults <- ``drawn``
    <- ``hparams``); the plan resolves them once, and a spec made without them resolves them here."""

    algorithm: str
    target: int
    trial_seed: int = 0
    hparams_seed: int = 0
    hparams: tuple[tuple[str, Any], ...] = ()  # explicit options (algo:key=value): the run folder's name and label
    #: drawn from the algorithm's search space by ``hparams_seed`` (vl2v.methods.search.random_hparams),
    #: explicit keys left out
    drawn: tuple[tuple[str, Any], ...] = ()
    values: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.values is None:
            object.__setattr__(self, "values", resolve_hparams(self.algorithm, self.drawn, self.hparams))

    @property
    def label(self) -> str:
        """The run's row label: the algorithm and its explicit options (``adip:lam=0.25``)."""
        return make_label(self.algorithm, self.hparams)

    def options(self) -> dict[str, Any]:
        """The hyperparameters that differ from the defaults: the draw, then the explicit options over it."""
        return {**dict(self.drawn), **dict(self.hparams)}

    def record(self) -> dict[str, Any]:
        """``config.json``'s ``spec``; ``drawn`` only when something was drawn (hparams seed 0: as before the
        search)."""
        d = asdict(self)
        d.pop("values")
        if not self.drawn:
            d.pop("drawn")
        return d
