"""open_clip's other architecture families through the openclip backend, local open_clip folders, `vl2v teacher list`."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from vl2v.cli import main
from vl2v.teachers import create_teacher
from vl2v.teachers.base import TeacherError
from vl2v.teachers.catalog import openclip_catalog, openclip_family, transformers_catalog
from vl2v.teachers.hf import FAMILIES

open_clip = pytest.importorskip("open_clip")

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot to them on a busy 2-core runner."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}
# Shrunk copies of open_clip's own configs (model_configs/*.json) of three other families.
TINY = {
    # ViT-B-16-SigLIP: timm ViT with attention-pool ("map") head and no projection, bidirectional text tower
    # pooled at the last token, logit bias. (Named without "siglip" so open_clip gives the bundled CLIP tokenizer
    # instead of fetching SigLIP's from the Hub.)
    "vl2v-tiny-sigmoid": {"embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
                          "vision_cfg": {"image_size": 32, "timm_model_name": "test_vit", "timm_model_pretrained": False,
                                         "timm_pool": "map", "timm_proj": "none"},
                          "text_cfg": dict(TEXT, no_causal_mask=True, proj_bias=True, pool_type="last",
                                           norm_kwargs={"eps": 1e-6})},
    # coca_ViT-B-32: attentional pooler returning (pooled, tokens), text CLS embedding, multimodal decoder
    "vl2v-tiny-coca": {"embed_dim": 32, "custom_text": True,
                       "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8,
                                      "attentional_pool": True, "attn_pooler_heads": 2, "output_tokens": True},
                       "text_cfg": dict(TEXT, embed_cls=True, output_tokens=True),
                       "multimodal_cfg": dict(TEXT, layers=1, attn_pooler_heads=2)},
    # EVA02-B-16: timm tower with class-token pooling and open_clip's linear projection
    "vl2v-tiny-eva": {"embed_dim": 32, "custom_text": True,
                      "vision_cfg": {"image_size": 32, "timm_model_name": "test_vit", "timm_model_pretrained": False,
                                     "timm_pool": "token", "timm_proj": "linear"},
                      "text_cfg": dict(TEXT)},
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("oc-families")
    for name, cfg in TINY.items():
        (d / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(d / f"{name}.json")
    return list(TINY)


@pytest.mark.parametrize("name", list(TINY))
def test_openclip_family_shapes_normalisation_and_image_tower(tiny_models, name):
    torch.manual_seed(0)
    t = create_teacher(f"openclip:{name}:none")
    assert t.white_box and t.image_size == 32 and t.embed_dim == TINY[name]["embed_dim"]
    x = torch.rand(3, 3, 32, 32)
    img, txt = t.embed_images(x), t.embed_texts(["a photo of a dog", "a photo of a cat"])
    assert img.shape == (3, t.embed_dim) and txt.shape == (2, t.embed_dim)
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.equal(t.embed_images(x), img) and not torch.allclose(img[0], img[1])
    assert t.embed_images(torch.rand(0, 3, 32, 32)).shape == (0, t.embed_dim)
    # the image tower is the model's own image path: same embeddings as open_clip's encode_image
    with torch.no_grad():
        ref = F.normalize(t.clip.encode_image((x - t.encoder.mean) / t.encoder.std), dim=-1)
        ref_t = F.normalize(t.clip.encode_text(t.tokenizer(["a photo of a dog"])), dim=-1)
    assert torch.allclose(img, ref, atol=1e-5) and torch.allclose(txt[:1], ref_t, atol=1e-5)
    enc = copy.deepcopy(t.image_encoder()).train()
    for p in enc.parameters():
        p.requires_grad_(True)
    out = enc(x)
    assert out.shape == (3, t.embed_dim)
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def _write_local_dir(d, name: str, mean=(0.5, 0.5, 0.5)):
    """A folder as `huggingface-cli download timm/ViT-B-16-SigLIP` gives: open_clip config and an HF tokenizer."""
    from helpers import bert_tokenizer

    d.mkdir(parents=True, exist_ok=True)
    model_cfg = copy.deepcopy(TINY[name])
    model_cfg["text_cfg"].update(vocab_size=30522, hf_tokenizer_name="vl2v/offline-test-tokenizer")
    (d / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(mean), "std": [0.5, 0.5, 0.5],
                                                     "interpolation": "bicubic", "resize_mode": "squash"}}))
    bert_tokenizer().save_pretrained(d)
    return d, model_cfg


def test_openclip_local_dir_offline_with_its_preprocessing_and_tokenizer(tiny_models, tmp_path):
    d, model_cfg = _write_local_dir(tmp_path / "oc-dir", "vl2v-tiny-sigmoid")
    # weights: a randomly initialised model of that config, saved under open_clip's file name
    from safetensors.torch import save_file

    (tmp_path / "cfg").mkdir()
    plain = copy.deepcopy(model_cfg)
    del plain["text_cfg"]["hf_tokenizer_name"]
    (tmp_path / "cfg" / "vl2v-tiny-sigmoid-hf.json").write_text(json.dumps(plain))
    open_clip.add_model_config(tmp_path / "cfg" / "vl2v-tiny-sigmoid-hf.json")
    torch.manual_seed(5)
    ref = open_clip.create_model("vl2v-tiny-sigmoid-hf", pretrained=None)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(d / "open_clip_model.safetensors"))

    t = create_teacher(f"openclip:local-dir:{d}")
    assert "mean=(0.5, 0.5, 0.5)" in t.identity() and "weights=dir:sha256:" in t.identity()
    assert type(t.tokenizer).__name__ == "HFTokenizer"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expect = F.normalize(ref.encode_image((x - 0.5) / 0.5), dim=-1)
    assert torch.allclose(t.embed_images(x), expect, atol=1e-5)
    e = t.embed_texts(["a photo of a dog", "a cat"])
    assert e.shape == (2, 64) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    # the digest follows the weights
    torch.manual_seed(6)
    other = open_clip.create_model("vl2v-tiny-sigmoid-hf", pretrained=None)
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    assert create_teacher(f"openclip:local-dir:{d}").identity() != t.identity()


def test_openclip_local_dir_errors(tmp_path):
    with pytest.raises(TeacherError, match="not an open_clip model folder"):
        create_teacher(f"openclip:local-dir:{tmp_path}")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY["vl2v-tiny-eva"]}))
    with pytest.raises(TeacherError, match="no weights file"):
        create_teacher(f"openclip:local-dir:{tmp_path}")


def test_openclip_tokenizer_failure_is_a_clear_error(tiny_models, monkeypatch):
    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(open_clip, "get_tokenizer", offline)
    with pytest.raises(TeacherError, match="cannot build the tokenizer.*openclip:local-dir:DIR"):
        create_teacher("openclip:vl2v-tiny-eva:none")


def test_local_checkpoint_takes_the_preprocessing_of_the_models_tags():
    from vl2v.teachers.openclip import _tag_preprocess

    siglip = _tag_preprocess(open_clip, "ViT-B-16-SigLIP", None)
    assert tuple(siglip["mean"]) == (0.5, 0.5, 0.5) and tuple(siglip["std"]) == (0.5, 0.5, 0.5)
    assert tuple(_tag_preprocess(open_clip, "RN50", "openai")["mean"]) == open_clip.OPENAI_DATASET_MEAN
    assert _tag_preprocess(open_clip, "vl2v-no-such-model", None) is None
    with pytest.raises(TeacherError, match="not a pretrained tag"):
        _tag_preprocess(open_clip, "ViT-B-16-SigLIP", "nope")


def test_openclip_local_checkpoint_file_uses_preprocess_option(tiny_models, tmp_path):
    t = create_teacher("openclip:vl2v-tiny-eva:none")
    path = tmp_path / "w.pt"
    torch.save(t.clip.state_dict(), path)
    # a tiny architecture has no tags: open_clip's defaults, unless told which tag's preprocessing to use
    assert "mean=(0.481455" in create_teacher(f"openclip:vl2v-tiny-eva:{path}").identity()
    with pytest.raises(TeacherError, match="not a pretrained tag"):
        create_teacher(f"openclip:vl2v-tiny-eva:{path}", preprocess="webli")


# --------------------------------------------------------------------------- catalogue and CLI
def test_openclip_family_names():
    assert openclip_family("ViT-B-16-SigLIP2", "webli") == "SigLIP 2"
    assert openclip_family("ViT-B-16-SigLIP", "webli") == "SigLIP"
    assert openclip_family("EVA02-B-16", "merged2b_s8b_b131k") == "EVA-CLIP"
    assert openclip_family("coca_ViT-B-32", "laion2b_s13b_b90k") == "CoCa"
    assert openclip_family("ViT-B-32-quickgelu", "metaclip_400m") == "MetaCLIP"
    assert openclip_family("ViT-B-16", "openai") == "OpenAI CLIP"


def test_catalogue_lists_the_whole_openclip_catalogue_and_every_family():
    cat = openclip_catalog()
    assert len(cat) == len(open_clip.list_pretrained()) and all(e.white_box for e in cat)
    specs = {e.spec for e in cat}
    assert "openclip:ViT-B-16:openai" in specs
    fams = {e.family for e in cat}
    assert {"SigLIP", "EVA-CLIP", "MetaCLIP", "CoCa"} <= fams
    assert {e.family for e in transformers_catalog()} == set(FAMILIES)


def test_cli_teacher_list(capsys):
    assert main(["teacher", "list"]) == 0
    out = capsys.readouterr().out
    for word in ("teacher backends", "transformers", "openclip", "conse", "white-box", "openclip:ViT-B-16:openai",
                 "google/siglip-base-patch16-224", "Salesforce/blip-itm-base-coco", "kakaobrain/align-base"):
        assert word in out
    for fam in FAMILIES:
        assert f"\n  {fam} " in out
    assert main(["teacher", "list", "openclip", "--grep", "coca"]) == 0
    rows = [l for l in capsys.readouterr().out.splitlines() if l.startswith("  ") and "openclip:" in l]
    assert rows and all("coca" in l.lower() for l in rows)
    assert main(["teacher", "list", "transformers"]) == 0
    out = capsys.readouterr().out
    assert "open_clip catalogue" not in out and "siglip2" in out


@pytest.mark.parametrize("args", [[], ["openclip", "--grep", "coca"], ["backends"]])
def test_cli_teachers_is_a_deprecated_alias_of_teacher_list(capsys, args):
    """`vl2v teachers` prints what `vl2v teacher list` prints, plus one line on stderr naming the new command."""
    assert main(["teacher", "list", *args]) == 0
    new = capsys.readouterr()
    assert main(["teachers", *args]) == 0
    old = capsys.readouterr()
    assert old.out == new.out and new.err == ""
    assert len(old.err.splitlines()) == 1 and "deprecated" in old.err and "vl2v teacher list" in old.err


def test_cli_teachers_alias_is_hidden(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    commands = [line.split()[0] for line in out.splitlines() if line.startswith("    ") and not line.startswith("     ")]
    assert "teacher" in commands and "teachers" not in commands, commands


def test_cli_train_with_a_coca_tower_end_to_end(tiny_models, image_folder, tmp_path, capsys):
    out = tmp_path / "runs"
    rc = main(["train", "--data", str(image_folder), "--teacher", "openclip:vl2v-tiny-coca:none",
               "--algorithm", "adip", "--target", "photo", "--store", "memory", "--no-pretrained",
               "--steps", "2", "--frozen-steps", "2", "--batch-size", "4", "--image-size", "32", "--eval-every", "2",
               "--views", "1", "--student", "timm:test_efficientnet", "--freeze-stages", "0", "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    assert (out / "adip" / "target-1-photo" / "seed0" / "done").exists()
