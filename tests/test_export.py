"""Export: ONNX / TorchScript students with their heads baked in, parity with PyTorch, clear errors."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_image
from helpers import onnx_exports, run_of, trained  # noqa: F401  (shared fixtures: trained runs, ONNX exports)
from vl2v.cli import main
from vl2v.serving.export import CosineHead, ExportError, LinearHead, build_head, export_run, load_student_run
from vl2v.serving.predict import load_image

OFFLINE_PACS = Path("/work/data/offline_pacs")  # the real offline benchmark, where this machine has it
PARITY_ATOL = 1e-4


def real_images(size: int, tmp_path: Path) -> torch.Tensor:
    """Generated test images (every class x domain style) plus offline-benchmark images where present."""
    paths = []
    for d in range(3):
        for c in range(6):
            p = tmp_path / f"gen_{d}_{c}.png"
            make_image(c, d, 7, size=64).save(p)
            paths.append(p)
    if OFFLINE_PACS.is_dir():
        paths += sorted(OFFLINE_PACS.glob("*/*/*.png"))[::97][:16]
    return torch.stack([load_image(p, size) for p in paths])


@pytest.mark.parametrize("algo,head", [("adip", CosineHead), ("erm_lp", LinearHead)])
def test_onnx_matches_pytorch_on_real_images(trained, onnx_exports, tmp_path, algo, head):
    import onnxruntime as ort

    res = onnx_exports[algo]
    loaded = load_student_run(run_of(trained, algo))
    h, _ = build_head(loaded.algorithm)
    assert isinstance(h, head)
    x = real_images(loaded.image_size, tmp_path)
    with torch.no_grad():
        ref = loaded.algorithm.predict(x).numpy()  # the training code's own predict: student + head
    sess = ort.InferenceSession(str(res.model_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"images": x.numpy()})[0]
    assert got.shape == ref.shape == (len(x), 3)
    diff = float(np.abs(got - ref).max())
    print(f"{algo}: {len(x)} images, max |ONNX - PyTorch| logit difference {diff:.2e}, |logit| up to {np.abs(ref).max():.1f}")
    assert diff <= PARITY_ATOL
    assert (got.argmax(1) == ref.argmax(1)).all()
    assert res.max_abs_diff <= PARITY_ATOL  # the exporter's own check, recorded in the sidecar
    # batch size is dynamic
    one = sess.run(None, {"images": x[:1].numpy()})[0]
    assert np.abs(one - ref[:1]).max() <= PARITY_ATOL


def test_cosine_head_is_100_cos_to_text(trained):
    loaded = load_student_run(run_of(trained, "adip"))
    algo = loaded.algorithm
    h, desc = build_head(algo)
    f = torch.randn(5, algo.student.feature_dim)
    z = torch.nn.functional.normalize(algo.projection(f), dim=-1)
    t = torch.nn.functional.normalize(algo.text, dim=-1)
    with torch.no_grad():
        assert torch.allclose(h(f), 100 * z @ t.T, atol=1e-4)
    assert desc["kind"] == "cosine-to-text" and desc["scale"] == 100.0


def test_sidecar_describes_the_model(trained, onnx_exports):
    res = onnx_exports["adip"]
    meta = json.loads(res.sidecar_path.read_text())
    assert res.sidecar_path.name == "student.onnx.json"
    assert meta["classes"] == ["cat", "dog", "horse"]
    assert meta["input"]["shape"] == ["batch", 3, 48, 48] and meta["input"]["range"] == [0.0, 1.0]
    assert meta["preprocessing"]["resize"] == [48, 48]
    assert meta["teacher_identity"].startswith("tiny-test(")
    assert meta["algorithm"] == "adip" and meta["head"]["kind"] == "cosine-to-text"
    assert meta["source_run"]["target"] == "art" and meta["source_run"]["checkpoint"] == "selected"
    assert Path(meta["source_run"]["run_dir"]) == run_of(trained, "adip").resolve()
    assert meta["parity"]["images"].endswith("target images of the run")  # checked on real images
    import hashlib

    assert meta["sha256"] == hashlib.sha256(res.model_path.read_bytes()).hexdigest()


def test_text_heads_get_an_embedding_output_and_their_class_embeddings_as_data(trained, onnx_exports):
    """adip: outputs logits and embedding, T_c written as data beside it; erm_lp: exported as before."""
    import onnxruntime as ort

    outs = {a: [o.name for o in ort.InferenceSession(str(r.model_path), providers=["CPUExecutionProvider"])
                .get_outputs()] for a, r in onnx_exports.items()}
    assert outs == {"adip": ["logits", "embedding"], "erm_lp": ["logits"]}
    erm, adip = onnx_exports["erm_lp"], onnx_exports["adip"]
    assert "open_vocabulary" not in erm.meta and not list(erm.model_path.parent.glob("*.classes.json"))
    ov = adip.meta["open_vocabulary"]
    assert ov["scale"] == 100.0 and ov["templates"] and ov["classes_file"] == "student.classes.json"
    assert ov["text_tower"] is None and "tiny-test" in ov["why_no_text_tower"]  # only conse/lit export theirs
    data = json.loads((adip.model_path.parent / "student.classes.json").read_text())
    assert data["classes"] == ["cat", "dog", "horse"] and data["templates"] == ov["templates"]
    text = torch.nn.functional.normalize(load_student_run(run_of(trained, "adip")).algorithm.text.float(), dim=-1)
    assert np.array_equal(np.asarray(data["embeddings"], np.float32), text.numpy())
    assert adip.meta["parity"]["max_abs_embedding_diff"] < 1e-5


@pytest.mark.parametrize("algo", ["kd", "adip"])
def test_torchscript_export_matches(trained, tmp_path, algo):
    res = export_run(run_of(trained, algo), "torchscript", out_dir=tmp_path)
    assert res.model_path.name == "student.pt" and res.max_abs_diff <= PARITY_ATOL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in newer torch, still works
        m = torch.jit.load(str(res.model_path))
    loaded = load_student_run(run_of(trained, algo))
    x = real_images(loaded.image_size, tmp_path)
    with torch.no_grad():
        assert (m(x) - loaded.algorithm.predict(x)).abs().max() <= PARITY_ATOL


def test_swad_checkpoint_exports(trained, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_of(trained, "erm_lp"), run)
    if not (run / "swad.safetensors").exists():  # SWAD may find no loss valley in so short a run
        shutil.copy(run / "model.safetensors", run / "swad.safetensors")
    res = export_run(run, "torchscript", which="swad", out_dir=tmp_path / "e")
    assert res.meta["source_run"]["checkpoint"] == "swad" and res.meta["source_run"]["weights"] == "swad.safetensors"


def test_clear_errors(trained, tmp_path, capsys):
    with pytest.raises(ExportError, match="zero-shot.*no student"):
        export_run(run_of(trained, "zeroshot"), "onnx", out_dir=tmp_path)
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export_run(run_of(trained, "adip"), "tflite", out_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_run(tmp_path / "nope", "onnx")
    with pytest.raises(FileNotFoundError, match="not a vl2v run directory"):
        export_run(tmp_path, "onnx")
    with pytest.raises(ExportError, match="unknown checkpoint"):
        export_run(run_of(trained, "adip"), "onnx", which="best")
    # the CLI prints them without a traceback, exit status 2
    for argv, msg in ((["export", str(run_of(trained, "zeroshot"))], "no student"),
                      (["export", str(run_of(trained, "adip")), "--format", "tflite"], "unknown export format"),
                      (["export", str(tmp_path / "missing")], "does not exist")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and "Traceback" not in err


def test_cli_export(trained, tmp_path, capsys):
    assert main(["export", str(run_of(trained, "kd")), "--format", "torchscript", "--out", str(tmp_path / "e"),
                 "--name", "kd_student"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "e" / "kd_student.pt").exists() and (tmp_path / "e" / "kd_student.pt.json").exists()
    assert "parity with PyTorch" in out and "head: linear" in out
