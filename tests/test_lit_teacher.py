"""The offline LiT teacher: `vl2v teacher build` on an injected fixture pool (no network), its determinism,
the benchmark-overlap check, and loading the built teacher (the teacher contract runs it too)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from vl2v.teachers.lit_build import (
    BenchmarkOverlapError,
    BuildConfig,
    LiTBuildError,
    Pair,
    benchmark_hashes,
    build_teacher,
    check_exclusion,
    check_sources,
    clean_caption,
    line_view,
    pixel_hash,
    render_pair,
    segment,
)

COLOURS = {"red": "#d22", "green": "#2a4", "blue": "#24d", "orange": "#e82", "purple": "#a3c", "black": "#111"}
SHAPES = {
    "circle": '<circle cx="8" cy="8" r="6" fill="{c}"/>',
    "square": '<rect x="2" y="2" width="12" height="12" fill="{c}"/>',
    "triangle": '<path d="M8 1 L15 15 L1 15 Z" fill="{c}"/>',
    "ring": '<circle cx="8" cy="8" r="5" fill="none" stroke="{c}" stroke-width="2"/>',
    "bar": '<rect x="2" y="6" width="12" height="4" fill="{c}"/>',
}
FIXTURE_CONFIG = BuildConfig(epochs=3, batch_size=16, val_fraction=0.3)


def fixture_pairs() -> list[Pair]:
    """30 generated (SVG icon, caption) pairs: a colour and a shape."""
    out = []
    for cn, c in COLOURS.items():
        for sn, body in SHAPES.items():
            svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">{body.format(c=c)}</svg>'.encode()
            views = ("orig",) if cn == "black" else ("orig", "line")
            out.append(Pair(f"fx-{cn}-{sn}", "fixture", f"{cn} {sn}", svg, views, f"fixture#{cn}-{sn}"))
    return out


def fixture_pool():
    return fixture_pairs(), [{"key": "fixture", "package": "generated-shapes", "version": "0", "licence": "CC0-1.0",
                              "role": "images", "pairs": 30}]


def build_fixture_teacher(root: Path, benchmark: Path | None = None, name: str = "fixture",
                          features: Path | None = None) -> Path:
    """Build the fixture teacher into ``root/name`` (features cached in ``features``, default ``root/features``)."""
    torch.manual_seed(123)  # must not matter
    return build_teacher(name, out_dir=root / name, config=FIXTURE_CONFIG, pool=fixture_pool(),
                         benchmark=benchmark if benchmark is not None else root / "no-benchmark",
                         cache_dir=features or root / "features", workers=0, log=lambda s: None)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_fixture_teacher(tmp_path_factory.mktemp("lit"))


def test_build_writes_weights_and_manifest(built):
    man = json.loads((built / "manifest.json").read_text())
    assert (built / "head.safetensors").is_file() and not list(built.glob("*.tmp*"))
    from vl2v.utils.hashing import file_digest

    assert man["weights_sha256"] == file_digest(built / "head.safetensors")
    assert man["counts"]["pairs"] == 30 and man["counts"]["render_failures"] == 0
    assert man["counts"]["heldout_concepts"] > 0 and man["counts"]["train_views"] > man["counts"]["train_pairs"]
    assert man["sources"][0]["licence"] == "CC0-1.0"
    assert man["exclusion_check"]["skipped"] == "benchmark not built"
    assert set(man["validation"]["lit"]) >= {"all", "colour", "line", "mono"}
    assert man["training"]["epochs"] == 3 and man["head"]["beta"] == 0.25


def test_build_is_deterministic(built, tmp_path):
    """Same inputs -> the same weights, with a fresh feature cache (re-rendered, re-run tower)."""
    again = build_fixture_teacher(tmp_path)
    from safetensors.torch import load_file

    fa, fb = (next((d.parent / "features").glob("*.safetensors")) for d in (built, again))
    assert fa.name == fb.name and torch.equal(load_file(str(fa))["feats"], load_file(str(fb))["feats"])
    a = json.loads((built / "manifest.json").read_text())["weights_sha256"]
    b = json.loads((again / "manifest.json").read_text())["weights_sha256"]
    assert a == b
    with pytest.raises(LiTBuildError, match="--force"):
        build_fixture_teacher(tmp_path)


def test_built_teacher_loads_with_weights_sha_in_identity(built):
    from vl2v.teachers import create_teacher

    t = create_teacher(f"lit:{built}")
    man = json.loads((built / "manifest.json").read_text())
    assert man["weights_sha256"] in t.identity() and t.white_box and t.image_size == 260
    e = t.embed_images(torch.rand(2, 3, 260, 260))
    assert e.shape == (2, 384)


def test_confidence_gate_moves_the_mix_towards_conse(built, tmp_path):
    """beta_confident != beta: the ConSE share grows with the classifier's top probability, and the identity says so."""
    import shutil

    from vl2v.teachers import create_teacher
    from vl2v.teachers.lit import mix_weight

    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    w = mix_weight(logits, 0.25, 1.0)
    top = logits.softmax(-1).amax(-1, keepdim=True)
    assert torch.allclose(w, 0.25 + 0.75 * top) and w[0, 0] < 0.5 < w[1, 0]
    assert mix_weight(logits, 0.25, 0.25) == 0.25
    man = json.loads((built / "manifest.json").read_text())
    assert set(man["validation"]["gate"]) >= {"0.25", "1"} and "all" in man["validation"]["top_probability"]
    assert man["head"]["beta_confident"] == (BuildConfig().beta_confident or BuildConfig().beta)
    gated = tmp_path / "gated"
    shutil.copytree(built, gated)
    man["head"]["beta_confident"] = 1.0
    (gated / "manifest.json").write_text(json.dumps(man))
    fixed = dict(man["head"], beta_confident=0.25)
    plain = tmp_path / "plain"
    shutil.copytree(built, plain)
    (plain / "manifest.json").write_text(json.dumps({**man, "head": fixed}))
    a, b = create_teacher(f"lit:{plain}"), create_teacher(f"lit:{gated}")
    assert "beta_confident" not in a.identity() and "beta_confident=1.0" in b.identity()
    x = torch.rand(2, 3, 260, 260)
    assert not torch.allclose(a.embed_images(x), b.embed_images(x))


def test_unbuilt_teacher_is_a_clear_error(tmp_path, monkeypatch):
    from vl2v.errors import UserError
    from vl2v.teachers import create_teacher

    monkeypatch.setenv("VL2V_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"run `vl2v teacher build mine`"):
        create_teacher("lit:mine")


def _write_benchmark(root: Path, images: dict[str, bytes]) -> Path:
    for rel, png in images.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png)
    with open(root / "manifest.jsonl", "w") as fh:
        for rel in images:
            fh.write(json.dumps({"path": rel}) + "\n")
    return root


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_exclusion_check_finds_a_benchmark_picture(tmp_path):
    from PIL import Image

    pairs = fixture_pairs()
    _, views, h = render_pair((pairs[3], 224))
    other = Image.linear_gradient("L").convert("RGB").resize((224, 224))
    bench = _write_benchmark(tmp_path / "bench", {"emoji/x/a.png": _png(Image.fromarray(views["orig"])),
                                                  "photo/y/b.png": _png(other)})
    bh = benchmark_hashes(bench)
    assert len(bh) == 2 and h in bh
    check_exclusion({"fx-other": pixel_hash(Image.new("RGB", (224, 224), (9, 9, 9)))}, bh)  # others pass
    with pytest.raises(BenchmarkOverlapError, match=r"fx-red-ring = emoji/x/a\.png"):
        check_exclusion({pairs[3].id: h, "fx-ok": "0" * 64}, bh)


def test_build_aborts_on_benchmark_overlap(built, tmp_path):
    from PIL import Image

    _, views, _ = render_pair((fixture_pairs()[7], 224))
    bench = _write_benchmark(tmp_path / "bench", {"clipart/z/c.png": _png(Image.fromarray(views["orig"]))})
    with pytest.raises(BenchmarkOverlapError, match="same pixels as OfflinePACS"):  # (features from the cache)
        build_fixture_teacher(tmp_path, benchmark=bench, features=built.parent / "features")
    assert not (tmp_path / "fixture" / "manifest.json").exists()


def test_excluded_sources_are_refused():
    from vl2v.teachers.lit_build import source_pins

    check_sources(source_pins())  # the shipped pins pass
    for bad in ("@iconify-json/twemoji", "@iconify-json/noto-v1", "openmoji", "@iconify-json/emojione-v1",
                "@lobehub/fluent-emoji-3d", "emoji-datasource-google"):
        pin = type("P", (), {"key": "x", "name": bad})()
        with pytest.raises(LiTBuildError, match="OfflinePACS"):
            check_sources([pin])


def test_captions_and_line_view():
    from PIL import Image

    assert clean_caption("waving-hand-2") == "waving hand"
    assert segment("oncomingautomobile", {"oncoming", "automobile", "on", "coming"}) == "oncoming automobile"
    assert segment("xyzzy", {"on"}) == "xyzzy"
    img = Image.new("RGB", (64, 64), (255, 255, 255))
    img.paste((30, 160, 220), (16, 16, 48, 48))
    lv = line_view(img)
    import numpy as np

    a = np.asarray(lv.convert("L"))
    assert lv.size == (64, 64) and a.min() < 50 and (a > 200).mean() > 0.5  # dark outline, mostly white


def test_cli_checks_its_options_before_building(capsys):
    from vl2v.cli import main

    assert main(["teacher", "build", "x", "--views", "line"]) == 2
    assert "--views takes orig" in capsys.readouterr().err
    assert main(["teacher", "build", "x", "--beta", "1.5"]) == 2
    assert main(["teacher", "build", "x", "--epochs", "0"]) == 2
    with pytest.raises(SystemExit):
        main(["teacher", "build", "x", "--bet", "0.5"])  # no abbreviations
