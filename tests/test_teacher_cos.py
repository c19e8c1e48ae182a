"""cos(z, I_t) on the target: how close a text-space student's embedding ends to its teacher's image embedding of
the same out-of-domain image, read from stored teacher answers only (no query, nothing billed)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import build_image_folder
from helpers import tiny_cfg


def _finals(result):
    return {f["label"]: f for f in result["finals"]}


def test_teacher_cosine_is_measured_from_stored_answers_and_bills_nothing(tmp_path):
    from vl2v.experiment.run import run_experiment

    folder = build_image_folder(tmp_path / "d", per_class=5)
    algos = ["zeroshot", "adip", "adip:lam=0", "erm_ft", "kd", "adip:lam=0,prototypes=etf"]
    with_zs = _finals(run_experiment(tiny_cfg(folder, tmp_path / "a", algos, targets=(1,)), log=lambda s: None))
    for label in ("adip", "adip (lam=0)"):
        cos = with_zs[label]["teacher_cos"]
        assert -1.0 <= cos["mean"] <= 1.0 and cos["images"] > 0 and cos["checkpoint"] == "selected"
        assert cos["split"] == "target in"
        preds = json.loads((Path(with_zs[label]["run_dir"]) / "predictions.json").read_text())
        assert cos["images"] == len(preds["items"])  # every test image of the target
    assert with_zs["adip"]["teacher_cos"]["mean"] != with_zs["adip (lam=0)"]["teacher_cos"]["mean"]
    # no text-space embedding: a classifier over the training classes, or a control's fixed prototypes
    for label in ("erm_ft", "kd", "adip (lam=0, prototypes=etf)"):
        assert "teacher_cos" not in with_zs[label], label

    # without the teacher's zero-shot, nothing stored answers for the target's images: not measured, not queried
    alone = _finals(run_experiment(tiny_cfg(folder, tmp_path / "b", ["adip"], targets=(1,)), log=lambda s: None))
    assert "teacher_cos" not in alone["adip"]
    # the measurement billed nothing: the same answers needed (the zero-shot run paid the prompts first there)
    bill, bill_zs = alone["adip"]["teacher_bill"], with_zs["adip"]["teacher_bill"]
    assert bill["needed"] == bill_zs["needed"] and bill["paid"]["image"] == bill_zs["paid"]["image"]
    assert alone["adip"]["selected"] == with_zs["adip"]["selected"]
