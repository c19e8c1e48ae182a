"""Model selection on run records, as DomainBed's ``model_selection.py``.

* ``"training_domain"`` (DomainBed's ``IIDAccuracySelectionMethod``, what vl2v
  reports): among a run's evaluations, the one with the highest mean accuracy on
  the source domains' "out" (20%) splits; ties go to the earliest.
* ``"oracle"`` (DomainBed's ``OracleSelectionMethod``, test-domain validation):
  the run's last evaluation (no early stopping on test data); its validation
  accuracy is the *target* domain's "out" split (which vl2v evaluates at every
  step), so comparing runs (hyperparameters) by :func:`selection_value` picks
  the best target "out" accuracy, as DomainBed does across hyperparameters.

Either way the reported accuracies are the target's "in" (80%) split (OOD) and
the sources' "out" splits (ID).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

METHODS = ("training_domain", "oracle")


def source_envs(record: dict[str, Any]) -> list[int]:
    test = set(record["args"]["test_envs"])
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    return [i for i in range(n) if i not in test]


def val_acc(record: dict[str, Any]) -> float:
    """Training-domain validation accuracy: mean "out" accuracy of the source domains."""
    return float(np.mean([record[f"env{i}_out_acc"] for i in source_envs(record)]))


def oracle_acc(record: dict[str, Any]) -> float:
    """Test-domain validation accuracy: the target domain's "out" accuracy."""
    return float(record[f"env{record['args']['test_envs'][0]}_out_acc"])


def selection_value(record: dict[str, Any], method: str = "training_domain") -> float:
    """The accuracy ``method`` validates with (compare runs, e.g. hyperparameters, by it)."""
    _check(method)
    return oracle_acc(record) if method == "oracle" else val_acc(record)


def final_stage(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of a run's last stage (ADiP: Distill; LP-FT: the fine-tuning), as the authors report."""
    if not records:
        return []
    last = max(records, key=lambda r: r["step"]).get("stage")
    return [r for r in records if r.get("stage") == last]


def select_record(records: Sequence[dict[str, Any]], method: str = "training_domain",
                  stages: str = "all") -> dict[str, Any] | None:
    """The selected record of one run (``None`` without records).

    ``stages="final"`` selects among the last stage's evaluations only (multi-stage algorithms);
    ``"all"`` among every evaluation of the run.
    """
    _check(method)
    if stages not in ("all", "final"):
        raise ValueError(f"stages must be 'all' or 'final', got {stages!r}")
    if stages == "final":
        records = final_stage(records)
    if method == "oracle":
        return sorted(records, key=lambda r: r["step"])[-1] if records else None
    best, best_val = None, -1.0
    for r in records:
        v = val_acc(r)
        if v > best_val:
            best, best_val = r, v
    return best


def summarize(record: dict[str, Any], method: str = "training_domain") -> dict[str, Any]:
    """Step, stage, OOD (target "in"), validation and ID (sources' "out") accuracy of a selected record."""
    _check(method)
    t = record["args"]["test_envs"][0]
    srcs = source_envs(record)
    return {"step": record.get("step"), "stage": record.get("stage"),
            "ood_acc": float(record[f"env{t}_in_acc"]), "val_acc": selection_value(record, method),
            "id_acc": float(np.mean([record[f"env{i}_out_acc"] for i in srcs]))}


def _check(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown selection method {method!r}; choose from {', '.join(METHODS)}")
