"""``vl2v predict``: top-k classes from a run directory, its checkpoint, an ONNX or a TorchScript export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import make_image
from helpers import onnx_exports, run_of, trained  # noqa: F401  (shared fixtures)
from vl2v.cli import main
from vl2v.serving.export import ExportError, export_run
from vl2v.serving.predict import expand_images, load_predictor


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for c in range(3):
        make_image(c, 0, 11, size=50).save(folder / f"class{c}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_every_model_kind_gives_the_same_top_k(trained, onnx_exports, images, tmp_path):
    run = run_of(trained, "adip")
    ts = export_run(run, "torchscript", out_dir=tmp_path / "ts")
    files = expand_images([images])
    assert [f.name for f in files] == ["class0.png", "class1.png", "class2.png"]  # the .txt is skipped
    kinds = {}
    for model in (run, run / "model.safetensors", onnx_exports["adip"].model_path, ts.model_path):
        p = load_predictor(model)
        preds = p.predict_files(files, topk=2)
        kinds[p.kind] = preds
        for pr in preds:
            assert len(pr.top) == 2 and pr.top[0][1] >= pr.top[1][1]
            assert all(c in ("cat", "dog", "horse") for c, _ in pr.top)
    assert set(kinds) == {"pytorch", "onnx", "torchscript"}
    ref = kinds["pytorch"]
    for kind, preds in kinds.items():
        for a, b in zip(preds, ref):
            assert [c for c, _ in a.top] == [c for c, _ in b.top], kind
            assert np.allclose([q for _, q in a.top], [q for _, q in b.top], atol=1e-5), kind


def test_probabilities_sum_to_one(trained, onnx_exports, images):
    p = load_predictor(onnx_exports["erm_lp"].model_path)
    (pr,) = p.predict_files([images / "class1.png"], topk=10)
    assert len(pr.top) == 3  # topk is capped at the number of classes
    assert abs(sum(q for _, q in pr.top) - 1.0) < 1e-5


def test_cli_predict_text_and_json(trained, onnx_exports, images, capsys):
    assert main(["predict", str(onnx_exports["adip"].model_path), str(images / "class0.png"), "--topk", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("class0.png") and out[1].lstrip().startswith("1. ") and len(out) == 4
    assert main(["predict", str(run_of(trained, "erm_lp")), str(images), "--topk", "1", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "pytorch" and len(d["predictions"]) == 3
    assert all(len(p["top"]) == 1 for p in d["predictions"])


def test_unreadable_images_are_reported_not_fatal(trained, images, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    rc = main(["predict", str(run_of(trained, "kd")), str(images / "class2.png"), str(bad), str(tmp_path / "gone.png")])
    cap = capsys.readouterr()
    assert rc == 1
    assert "class2.png" in cap.out and "error: no such file" in cap.out and "broken.png" in cap.out
    assert "2 of 3 images could not be read" in cap.err


def test_predict_errors(trained, onnx_exports, images, tmp_path, capsys):
    with pytest.raises(ExportError, match="no student"):
        load_predictor(run_of(trained, "zeroshot"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_predictor(tmp_path / "student.onnx")
    lone = tmp_path / "lone.onnx"
    shutil.copy(onnx_exports["adip"].model_path, lone)
    with pytest.raises(FileNotFoundError, match="lone.onnx.json is missing"):
        load_predictor(lone)
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(ExportError, match="cannot predict with"):
        load_predictor(tmp_path / "model.tflite")
    assert main(["predict", str(run_of(trained, "zeroshot")), str(images)]) == 2
    assert "no student" in capsys.readouterr().err
    assert main(["predict", str(run_of(trained, "adip")), str(tmp_path / "empty_dir_does_not_exist")]) == 1
    assert main(["predict", str(run_of(trained, "adip")), str(images), "--topk", "0"]) == 2
