"""transformers teachers: every supported family from a tiny random configuration, saved and reloaded offline.

Tokenizers are built without a download: CLIP's BPE from open_clip's bundled
merges, BERT's WordPiece from the MiniLM package's vocab.txt, a SentencePiece
model trained here for SigLIP, a byte-fallback BPE for SigLIP 2.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from helpers import HF_SMALL as SMALL  # noqa: E402
from helpers import bert_tokenizer, build_clip  # noqa: E402
from helpers import hf_text_config as _text  # noqa: E402
from vl2v.cli import main  # noqa: E402
from vl2v.teachers import create_teacher  # noqa: E402
from vl2v.teachers.base import TeacherError  # noqa: E402
from vl2v.teachers.hf import FAMILIES, HFTeacher, family_for_config  # noqa: E402

T = transformers
WORDS = ("a photo of the cat dog horse house person guitar elephant giraffe drawing sketch painting cartoon "
         "art picture small big").split()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and lose a lot to them on a busy 2-core runner."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --------------------------------------------------------------------------- offline tokenizers
def sentencepiece_tokenizer(tmp: Path):
    spm = pytest.importorskip("sentencepiece")
    sents = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 10
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sents), model_writer=buf, vocab_size=40,
                                   model_type="unigram", hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
                                   minloglevel=2, character_coverage=1.0)
    path = tmp / "spiece.model"
    path.write_bytes(buf.getvalue())
    return T.SiglipTokenizer(vocab_file=str(path))


def gemma_like_tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz▁":
        vocab[c] = len(vocab)
    return T.Siglip2Tokenizer(vocab=vocab, merges=[])


# --------------------------------------------------------------------------- tiny models
def build_metaclip2(d: Path, seed: int = 0) -> Path:
    return build_clip(d, seed, cls=T.MetaClip2Model)


def build_siglip(d: Path, seed: int = 0) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    tok = sentencepiece_tokenizer(d)
    cfg = T.SiglipConfig(text_config=_text(tok, max_position_embeddings=16),
                         vision_config=dict(SMALL, image_size=32, patch_size=8))
    torch.manual_seed(seed)
    T.SiglipModel(cfg).save_pretrained(d)
    ip = T.SiglipImageProcessor(size={"height": 32, "width": 32})
    T.SiglipProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    (d / "spiece.model").exists() or pytest.fail("tokenizer model not saved")
    return d


def build_siglip2(d: Path, seed: int = 0) -> Path:
    tok = gemma_like_tokenizer()
    cfg = T.Siglip2Config(text_config=_text(tok, max_position_embeddings=16),
                          vision_config=dict(SMALL, num_patches=16, patch_size=8))
    torch.manual_seed(seed)
    T.Siglip2Model(cfg).save_pretrained(d)
    ip = T.Siglip2ImageProcessor(patch_size=8, max_num_patches=16)
    T.Siglip2Processor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    return d


def build_align(d: Path, seed: int = 0, projection_dim: int = 32) -> Path:
    tok = bert_tokenizer()
    cfg = T.AlignConfig(text_config=_text(tok, max_position_embeddings=64),
                        vision_config=dict(image_size=32, width_coefficient=0.1, depth_coefficient=0.1, hidden_dim=64),
                        projection_dim=projection_dim)
    torch.manual_seed(seed)
    model = T.AlignModel(cfg)
    for m in model.vision_model.modules():  # the 0.02-std default init shrinks a random EfficientNet's output to ~1e-18
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    model.save_pretrained(d)
    ip = T.EfficientNetImageProcessor(size={"height": 40, "width": 40}, crop_size={"height": 32, "width": 32},
                                      do_center_crop=True, rescale_factor=1 / 127.5, rescale_offset=True,
                                      do_normalize=False, include_top=False)
    T.AlignProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    return d


def build_flava(d: Path, seed: int = 0) -> Path:
    tok = bert_tokenizer()
    cfg = T.FlavaConfig(text_config=_text(tok, max_position_embeddings=64), image_config=dict(SMALL, image_size=32, patch_size=8),
                        multimodal_config=dict(SMALL), hidden_size=32, projection_dim=16,
                        image_codebook_config=dict(hidden_size=8, num_groups=1, num_blocks_per_group=1, vocab_size=16))
    torch.manual_seed(seed)
    T.FlavaModel(cfg).save_pretrained(d)
    ip = T.FlavaImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32})
    T.FlavaProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    return d


def build_blip(d: Path, seed: int = 0) -> Path:
    tok = bert_tokenizer(bos_token="[DEC]")
    cfg = T.BlipConfig(text_config=_text(tok, max_position_embeddings=64, encoder_hidden_size=32),
                       vision_config=dict(SMALL, image_size=32, patch_size=8, initializer_range=0.02),
                       projection_dim=16, image_text_hidden_size=16)  # BLIP's vision default init std is 1e-10
    torch.manual_seed(seed)
    T.BlipForImageTextRetrieval(cfg).save_pretrained(d)
    ip = T.BlipImageProcessor(size={"height": 32, "width": 32})
    T.BlipProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    return d


BUILDERS = {"clip": build_clip, "metaclip2": build_metaclip2, "siglip": build_siglip, "siglip2": build_siglip2,
            "align": build_align, "flava": build_flava, "blip": build_blip}
DIMS = {"clip": 16, "metaclip2": 16, "siglip": 32, "siglip2": 32, "align": 32, "flava": 16, "blip": 16}


def test_every_family_has_a_builder():
    assert set(BUILDERS) == set(FAMILIES)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def teachers(model_dirs) -> dict[str, HFTeacher]:
    return {name: create_teacher(f"transformers:{d}") for name, d in model_dirs.items()}


# --------------------------------------------------------------------------- per family
@pytest.mark.parametrize("family", list(BUILDERS))
def test_family_shapes_normalisation_determinism(teachers, family):
    t = teachers[family]
    assert t.family.name == family and t.backend == "transformers" and t.white_box
    assert t.image_size == 32 and t.embed_dim == DIMS[family]
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    img = t.embed_images(x)
    txt = t.embed_texts(["a photo of a dog", "a photo of a cat", "a sketch of a big elephant"])
    assert img.shape == (3, t.embed_dim) and txt.shape == (3, t.embed_dim)
    assert img.dtype == torch.float32 and txt.dtype == torch.float32
    assert torch.allclose(img.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(t.embed_images(x), img) and torch.equal(t.embed_texts(["a photo of a dog", "a photo of a cat",
                                                                              "a sketch of a big elephant"]), txt)
    assert not torch.allclose(img[0], img[1]) and not torch.allclose(txt[0], txt[1])
    # a batch is embedded like its items one by one (batching and padding do not leak)
    assert torch.allclose(t.embed_images(x[1:2]), img[1:2], atol=1e-5)
    assert torch.allclose(t.embed_texts(["a sketch of a big elephant"]), txt[2:], atol=1e-5)
    # other input sizes are resized to the teacher's
    assert t.embed_images(torch.rand(2, 3, 48, 48)).shape == (2, t.embed_dim)
    assert t.embed_images(torch.rand(0, 3, 32, 32)).shape == (0, t.embed_dim)
    ident = t.identity()
    assert ident.startswith(f"transformers({family};dir=") and "weights=sha256:" in ident and "input=32px" in ident


@pytest.mark.parametrize("family", list(BUILDERS))
def test_image_encoder_is_differentiable_and_matches_embeddings(teachers, family):
    import copy

    t = teachers[family]
    enc = copy.deepcopy(t.image_encoder()).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.nn.functional.normalize(enc(x), dim=-1), t.embed_images(x), atol=1e-5)
    for p in enc.parameters():
        p.requires_grad_(True)
    enc.train()
    out = enc(x)
    assert out.shape == (2, t.embed_dim)
    out.pow(2).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())
    # the teacher's own tower is untouched and frozen
    assert not any(p.requires_grad for p in t.image_encoder().parameters())


@pytest.mark.parametrize("family", list(BUILDERS))
def test_normalisation_matches_the_image_processor(teachers, model_dirs, family):
    """Our tensor-side normalisation equals the processor's own on an already-sized image."""
    t = teachers[family]
    ip = T.AutoProcessor.from_pretrained(model_dirs[family], local_files_only=True).image_processor
    x = torch.rand(2, 3, 32, 32)
    u8 = (x * 255).round().to(torch.uint8)
    kw = dict(do_resize=False, do_center_crop=False) if family != "siglip2" else {}
    ref = ip(images=list(u8), return_tensors="pt", **kw)
    ours = t.encoder.tower_inputs(u8.float() / 255)
    assert torch.allclose(ours["pixel_values"], ref["pixel_values"].float(), atol=1e-4)
    if family == "siglip2":
        assert torch.equal(ours["pixel_attention_mask"].long(), ref["pixel_attention_mask"].long())
        assert torch.equal(ours["spatial_shapes"], ref["spatial_shapes"])


@pytest.mark.parametrize("family", list(BUILDERS))
def test_embeddings_match_the_library_forward(teachers, model_dirs, family):
    """The image-text similarities equal the model's own contrastive logits (up to scale / bias)."""
    t = teachers[family]
    if family in ("blip",):  # BLIP's ITC path is its retrieval head with use_itm_head=False
        proc = T.AutoProcessor.from_pretrained(model_dirs[family], local_files_only=True)
        x = torch.rand(2, 3, 32, 32)
        inputs = proc(text=["a dog", "a cat"], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = t.hf(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       pixel_values=t.encoder.tower_inputs(x)["pixel_values"], use_itm_head=False)
        sims = t.embed_images(x) @ t.embed_texts(["a dog", "a cat"]).T
        ref = out.itm_score if hasattr(out, "itm_score") else out[0]
        assert torch.allclose(sims, ref, atol=1e-4)
        return
    if family == "flava":  # FlavaModel.forward returns unprojected sequences; its get_*_features project every token
        x = torch.rand(2, 3, 32, 32)
        tok = t.tokenizer(["a dog", "a big cat"], return_tensors="pt", padding=True)
        with torch.no_grad():
            img = t.hf.get_image_features(pixel_values=t.encoder.tower_inputs(x)["pixel_values"])
            txt = t.hf.get_text_features(**tok)
        img = getattr(img, "pooler_output", img)[:, 0]
        txt = getattr(txt, "pooler_output", txt)[:, 0]
        assert torch.allclose(torch.nn.functional.normalize(img, dim=-1), t.embed_images(x), atol=1e-5)
        assert torch.allclose(torch.nn.functional.normalize(txt, dim=-1), t.embed_texts(["a dog", "a big cat"]), atol=1e-5)
        return
    x = torch.rand(2, 3, 32, 32)
    texts = ["a dog", "a big cat"]
    tok = t.tokenizer(texts, return_tensors="pt", **({"padding": "max_length", "max_length": t._context}
                                                    if t.family.text_padding == "max_length" else {"padding": True}))
    if not t.family.text_attention_mask:
        tok.pop("attention_mask", None)
    tok.pop("token_type_ids", None)
    with torch.no_grad():
        out = t.hf(**tok, **t.encoder.tower_inputs(x))
    assert torch.allclose(out.image_embeds.float(), t.embed_images(x), atol=1e-5)
    assert torch.allclose(out.text_embeds.float(), t.embed_texts(texts), atol=1e-5)


def test_identity_changes_with_weights_and_preprocessing(tmp_path, teachers, model_dirs):
    a = teachers["clip"]
    other = build_clip(tmp_path / "clip-seed1", seed=1)
    b = create_teacher(f"transformers:{other}")
    assert a.identity() != b.identity()
    x = torch.rand(1, 3, 32, 32)
    assert not torch.allclose(a.embed_images(x), b.embed_images(x))
    # same weights, other normalisation -> other identity
    cfg_file = other / "processor_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["image_processor"]["image_mean"] = [0.5, 0.5, 0.5]
    cfg_file.write_text(json.dumps(cfg))
    c = create_teacher(f"transformers:{other}")
    assert c.identity() != b.identity() and "shift=(-1.0," not in b.identity()
    # reloading the same directory gives the same identity and embeddings
    again = create_teacher(f"transformers:{model_dirs['clip']}")
    assert again.identity() == a.identity() and torch.equal(again.embed_images(x), a.embed_images(x))


def test_mismatched_image_and_text_sizes_are_rejected(tmp_path):
    d = build_align(tmp_path / "align-bad", projection_dim=16)  # text projected to 16-d, image pooled to 32-d
    with pytest.raises(TeacherError, match=r"image \(32\) and text \(16\) embedding sizes differ"):
        create_teacher(f"transformers:{d}")


def test_unsupported_and_missing_models_give_clear_errors(tmp_path, model_dirs):
    with pytest.raises(TeacherError, match="needs a model"):
        create_teacher("transformers")
    with pytest.raises(TeacherError, match="not a model directory"):
        create_teacher(f"transformers:{tmp_path / 'nope'}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TeacherError, match="cannot load the config"):
        create_teacher(f"transformers:{empty}")
    with pytest.raises(TeacherError, match="revision= applies to hub ids"):
        create_teacher(f"transformers:{model_dirs['clip']}", revision="main")
    with pytest.raises(TeacherError, match="not a supported transformers teacher family.*supported: clip"):
        family_for_config(T.BertConfig())
    with pytest.raises(TeacherError, match="BLIP-2"):
        family_for_config(T.Blip2Config())
    blip_cfg = T.BlipConfig()
    blip_cfg.architectures = ["BlipForConditionalGeneration"]
    with pytest.raises(TeacherError, match="no image-text contrastive heads.*BlipForImageTextRetrieval"):
        family_for_config(blip_cfg)


def test_blackbox_wrapper_and_store_work_with_hf_teachers(teachers):
    from vl2v.teachers.store import TeacherStore

    t = teachers["siglip"]
    from vl2v.teachers.blackbox import BlackBoxTeacher

    w = BlackBoxTeacher(t)
    with pytest.raises(TeacherError, match="black-box"):
        w.image_encoder()
    store = TeacherStore(w)
    e = store.text_embeddings(["a dog", "a cat"])
    assert e.shape == (2, t.embed_dim) and torch.allclose(e, t.embed_texts(["a dog", "a cat"]), atol=1e-3)


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("family", list(BUILDERS))
def test_cli_train_adip_end_to_end(image_folder, model_dirs, tmp_path, capsys, family):
    out = tmp_path / "runs"
    rc = main(["train", "--data", str(image_folder), "--teacher", f"transformers:{model_dirs[family]}",
               "--algorithm", "adip", "--target", "photo", "--store", "memory", "--no-pretrained",
               "--steps", "2", "--frozen-steps", "2", "--batch-size", "4", "--image-size", "32",
               "--eval-every", "2", "--views", "1", "--student", "timm:test_efficientnet", "--freeze-stages", "0", "--out", str(out)])
    cap = capsys.readouterr()
    text = cap.out
    assert rc == 0, cap.err[-2000:]
    assert "| adip |" in text
    run = out / "adip" / "target-1-photo" / "seed0"
    assert (run / "done").exists()
    rec = json.loads((run / "results.jsonl").read_text().splitlines()[-1])
    assert rec["teacher_image_queries"] > 0
