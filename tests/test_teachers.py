"""Teachers: the open_clip backend on a random tiny architecture, the offline ConSE teacher, the black-box wrapper."""

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import TINY_CLIP
from vl2v.teachers import create_teacher
from vl2v.teachers.base import TeacherError
from vl2v.teachers.blackbox import BlackBoxTeacher
from vl2v.teachers.prompts import prompts_for, text_classifier, validate_templates


@pytest.fixture(scope="module")
def tiny_clip_name(tmp_path_factory):
    import open_clip

    d = tmp_path_factory.mktemp("oc")
    (d / "vl2v-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(d / "vl2v-tiny-clip.json")
    return "vl2v-tiny-clip"


def test_openclip_random_weights_shapes_and_normalisation(tiny_clip_name):
    t = create_teacher(f"openclip:{tiny_clip_name}:none")
    assert t.embed_dim == 32 and t.image_size == 32 and t.white_box
    img = t.embed_images(torch.rand(3, 3, 32, 32))
    txt = t.embed_texts(["a photo of a dog", "a photo of a cat"])
    assert img.shape == (3, 32) and txt.shape == (2, 32)
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(2), atol=1e-5)
    assert "weights=random" in t.identity() and "mean=(0.481455" in t.identity()
    # deterministic
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(t.embed_images(x), t.embed_images(x))


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_openclip_local_checkpoint_round_trip(tiny_clip_name, tmp_path, suffix):
    t = create_teacher(f"openclip:{tiny_clip_name}:none")
    path = tmp_path / f"ckpt{suffix}"
    state = t.clip.state_dict()
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    t2 = create_teacher(f"openclip:{tiny_clip_name}:{path}")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(t.embed_images(x), t2.embed_images(x), atol=1e-6)
    assert torch.allclose(t.embed_texts(["a"]), t2.embed_texts(["a"]), atol=1e-6)
    assert path.name in t2.identity() and t2.identity() != t.identity()


def test_openclip_errors(tiny_clip_name, tmp_path):
    with pytest.raises(TeacherError, match="no model"):
        create_teacher("openclip:Not-A-Model:none")
    with pytest.raises(TeacherError, match="neither a local file nor a pretrained tag"):
        create_teacher(f"openclip:{tiny_clip_name}:/no/such/file.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"nonsense": torch.zeros(2)}, bad)
    with pytest.raises(TeacherError, match="cannot load"):
        create_teacher(f"openclip:{tiny_clip_name}:{bad}")


def test_registry_and_backend_imports_stay_light():
    """Importing the registry (or the wire protocol) imports no backend and not torch; listing the teachers imports
    every backend module (vl2v.teachers.BACKENDS, in that order), which keeps its heavy optional dependencies for
    when a teacher is built."""
    import subprocess
    import sys

    from vl2v.teachers import BACKENDS

    heavy = ("open_clip", "transformers", "httpx", "fastapi", "onnxruntime", "tenacity", "sentence_transformers")
    code = ("import sys; import vl2v.teachers.wire, vl2v.teachers.registry as r; "
            "first = sorted(m for m in sys.modules if m == 'torch' or m.startswith('vl2v.teachers.')); "
            "modules = [t.factory.__module__ for t in r.list_teachers()]; "
            f"print(first, modules, sorted(m for m in {heavy!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == f"['vl2v.teachers.registry', 'vl2v.teachers.wire'] {list(BACKENDS)} []", out


@pytest.mark.parametrize("first", ["vl2v.teachers.lit", "vl2v.teachers.privileged", "vl2v.teachers.vendors"])
def test_teacher_order_does_not_depend_on_import_order(first):
    """A backend module imported on its own first (lit imports conse; privileged registers before the rest are
    imported) still takes its place in vl2v.teachers.BACKENDS' order (`vl2v teacher list`); a plug-in's teacher
    comes after the built-ins."""
    import subprocess
    import sys

    from vl2v.teachers import BACKENDS

    code = (f"import {first}; from vl2v.teachers.registry import list_teachers, register_teacher; "
            "register_teacher('x-plugin', summary='s', white_box=False)(lambda spec=None, **o: None); "
            "print([t.factory.__module__ for t in list_teachers()])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str([*BACKENDS, "__main__"]), out


def test_unknown_teacher_backend():
    from vl2v.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="Available: .*conse"):
        create_teacher("clipp")


@pytest.fixture(scope="module")
def conse():
    return create_teacher("conse", k=5)


def test_conse_is_a_convex_combination_of_class_name_embeddings(conse):
    x = torch.rand(2, 3, 260, 260)
    emb = conse.embed_images(x)
    assert emb.shape == (2, 384)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    enc = conse.image_encoder()
    with torch.no_grad():
        p = enc.classifier((x - enc.mean) / enc.std).softmax(-1)
        top_p, top_i = p.topk(5, dim=-1)
        manual = (top_p[..., None] * enc.class_text[top_i]).sum(1) / top_p.sum(-1, keepdim=True)
    assert torch.allclose(emb, F.normalize(manual, dim=-1), atol=1e-5)
    assert "k=5" in conse.identity() and "NOT CLIP" not in conse.identity()
    assert conse.identity().startswith("conse(")


def test_conse_text_side_and_zero_shot_prompt_ensemble(conse):
    prompts = prompts_for(["golden_retriever", "tabby"], validate_templates(["a photo of a {c}", "a drawing of a {c}"]))
    assert prompts == ["a photo of a golden retriever", "a drawing of a golden retriever",
                       "a photo of a tabby", "a drawing of a tabby"]
    e = conse.embed_texts(prompts)
    T = text_classifier(e, 2, 2)
    assert T.shape == (2, 384) and torch.allclose(T.norm(dim=1), torch.ones(2), atol=1e-5)
    # the prompt ensemble is the normalised mean of normalised prompt embeddings
    assert torch.allclose(T[0], F.normalize(e[:2].mean(0), dim=0), atol=1e-6)


def test_conse_options_validated():
    with pytest.raises(TeacherError, match="k must be"):
        create_teacher("conse", k=0)


def test_templates_must_have_placeholder():
    with pytest.raises(ValueError, match="placeholder"):
        validate_templates(["a photo"])


def test_blackbox_exposes_only_embeddings_and_counts(tiny_teacher):
    bb = BlackBoxTeacher(tiny_teacher)
    assert not bb.white_box
    with pytest.raises(TeacherError, match="black-box"):
        bb.image_encoder()
    bb.embed_images(torch.rand(3, 3, 24, 24))
    bb.embed_texts(["a", "b"])
    assert (bb.image_queries, bb.text_queries) == (3, 2)
    assert bb.identity() == tiny_teacher.identity() and bb.embed_dim == 16
