"""Model selection: training-domain validation (DomainBed's ``IIDAccuracySelectionMethod``).

Among a run's evaluations, pick the one with the highest mean accuracy on the
source domains' "out" (20%) splits; ties go to the earliest. Report the
target's "in" (80%) accuracy there (OOD) and the sources' "out" accuracy (ID).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def source_envs(record: dict[str, Any]) -> list[int]:
    test = set(record["args"]["test_envs"])
    n = 0
    while f"env{n}_out_acc" in record:
        n += 1
    return [i for i in range(n) if i not in test]


def val_acc(record: dict[str, Any]) -> float:
    return float(np.mean([record[f"env{i}_out_acc"] for i in source_envs(record)]))


def select_record(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    best, best_val = None, -1.0
    for r in records:
        v = val_acc(r)
        if v > best_val:
            best, best_val = r, v
    return best


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    t = record["args"]["test_envs"][0]
    srcs = source_envs(record)
    return {"step": record.get("step"), "stage": record.get("stage"),
            "ood_acc": float(record[f"env{t}_in_acc"]), "val_acc": val_acc(record),
            "id_acc": float(np.mean([record[f"env{i}_out_acc"] for i in srcs]))}
