"""The offline LiT teacher: `vl2v teacher build` on an injected fixture pool (no network), its determinism,
the benchmark-overlap check, and loading the built teacher (the teacher contract runs it too). The design-family
check, the near-duplicate drop and the refusal without a benchmark: tests/test_lit_clean.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import build_fixture_teacher, fixture_pairs, fixture_photos, write_benchmark
from vl2v.teachers.lit_build import (
    BenchmarkOverlapError,
    BuildConfig,
    LiTBuildError,
    benchmark_hashes,
    check_exclusion,
    check_sources,
    clean_caption,
    line_view,
    pixel_hash,
    render_pair,
    segment,
)


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
    # checked against the fixture benchmark (two unrelated pictures): no overlap, nothing dropped
    assert man["benchmark_check"] == "done" and man["exclusion_check"]["overlaps"] == 0
    assert man["exclusion_check"]["benchmark_images"] == 2 and man["exclusion_check"]["pictures_checked"] == 30
    nd = man["near_duplicate_check"]
    assert nd["dropped_icons"] == 0 and nd["matches"] == [] and nd["views_checked"] == man["counts"]["final_views"]
    assert man["counts"]["near_duplicates_dropped"] == 0 and man["sources"][0]["family"] == "fixture-shapes"
    assert set(man["validation"]["lit"]) >= {"all", "colour", "line", "mono"}
    assert man["training"]["epochs"] == 3 and man["head"]["beta"] == 0.25
    # the novelty gate: its threshold measured on the held-out icons, its bank shipped in the weights file
    nov = man["head"]["novelty"]
    assert nov["beta_far"] == 0.75 and nov["k"] == 10 and 0.0 < nov["near"] <= 1.0
    assert nov["near"] == man["validation"]["novelty"]["near"] and set(man["validation"]["novelty"]["far"]) == {"0.5", "0.75", "1"}
    from safetensors.torch import load_file

    from vl2v.teachers.lit import BANK

    w = load_file(str(built / "head.safetensors"))
    assert w[BANK].shape == (man["counts"]["final_views"], 1280) and w[BANK].dtype == torch.float16
    # photo validation: both groups, all four readings, for the validation and the shipped head
    pv = man["photo_validation"]
    assert pv["pictures"] == 6 and pv["photos"] == 3 and pv["validation_head"]["candidates"] == 6
    for which in ("validation_head", "shipped_head"):
        for kind in ("lit", "no_novelty", "head_only", "conse_only"):
            assert set(pv[which][kind]) == {"photo", "drawn"} and pv[which][kind]["photo"]["n"] == 3
    assert set(pv["validation_head"]["far"]) == {"0.5", "0.75", "1"}
    assert pv["near_duplicate_check"]["dropped"] == [] and pv["near_duplicate_check"]["cosine_at_least"] == 0.85


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
    assert man["head"]["beta_confident"] == BuildConfig().beta_confident
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


def test_novelty_gate_moves_unfamiliar_pictures_to_conse():
    """A picture like a training view keeps the base weight; one unlike every view gets beta_far; in between,
    linear in the score."""
    from vl2v.teachers.lit import Novelty, gated_weight, novelty_score

    bank = torch.nn.functional.normalize(torch.eye(4, 8), dim=-1)
    near = torch.tensor([[5.0, 0, 0, 0, 0, 0, 0, 0]])  # = bank row 0
    far = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 1.0]])  # orthogonal to every row
    mid = torch.tensor([[1.0, 0, 0, 0, 0, 0, 0, 1.0]])  # cosine 0.707 to row 0
    nv = Novelty(k=1, near=0.9, width=0.4, beta_far=0.75)
    s = novelty_score(torch.cat([near, far, mid]), bank, nv.k)
    assert torch.allclose(s, torch.tensor([1.0, 0.0, 2 ** -0.5]))
    w = gated_weight(0.25, s, nv)
    assert w.shape == (3, 1) and w[0, 0] == 0.25 and w[1, 0] == 0.75
    assert torch.isclose(w[2, 0], torch.tensor(0.25 + 0.5 * (0.9 - 2 ** -0.5) / 0.4))
    base = torch.tensor([[0.3], [0.4], [0.5]])  # a per-row base (the confidence gate) moves the same way
    assert torch.allclose(gated_weight(base, s, nv)[:2], torch.tensor([[0.3], [0.75]]))
    with pytest.raises(ValueError):
        Novelty(k=0, near=0.9, width=0.4, beta_far=0.75)


def test_format_1_builds_still_load_without_the_gate(built, tmp_path):
    """A build from before the novelty gate (no bank, no settings) loads as it always did; a manifest and
    weights file that disagree are refused."""
    import shutil

    from safetensors.torch import load_file, save_file

    from vl2v.errors import UserError
    from vl2v.teachers import create_teacher
    from vl2v.teachers.lit import BANK
    from vl2v.utils.hashing import file_digest

    new = create_teacher(f"lit:{built}")
    assert "novelty=k10,near=" in new.identity() and "format=2" in new.identity()
    old = tmp_path / "old"
    shutil.copytree(built, old)
    w = load_file(str(old / "head.safetensors"))
    w.pop(BANK)
    save_file(w, str(old / "head.safetensors"))
    man = json.loads((old / "manifest.json").read_text())
    man.update(format=1, weights_sha256=file_digest(old / "head.safetensors"))
    man["head"].pop("novelty")
    (old / "manifest.json").write_text(json.dumps(man))
    t = create_teacher(f"lit:{old}")
    assert "novelty" not in t.identity() and "format=1" in t.identity()
    x = torch.rand(2, 3, 260, 260)
    assert not torch.allclose(t.embed_images(x), new.embed_images(x))
    man["head"]["novelty"] = {"k": 10, "near": 0.7, "width": 0.2, "beta_far": 0.75}
    (old / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UserError, match="disagree about the novelty gate"):
        create_teacher(f"lit:{old}")


def test_photo_validation_drops_near_duplicates_of_the_benchmark(tmp_path):
    """A validation picture that repeats a benchmark image (here: the same drawing, mirrored) is dropped and
    named; the others are kept with their captions and photo flags."""
    from PIL import Image, ImageOps

    from vl2v.teachers import lit_photoval as pv
    from vl2v.teachers.lit import load_tower

    root, photos = fixture_photos(tmp_path / "photos")
    files, imgs = pv.load_pictures(root, 224)
    i = files.index("things/blue_square.png")
    other = Image.new("RGB", (224, 224), "white")
    for k in range(0, 224, 56):  # an unrelated picture: a checkerboard
        for m in range(0, 224, 56):
            if (k + m) // 56 % 2:
                other.paste((20, 20, 20), (k, m, k + 56, m + 56))
    bench = write_benchmark(tmp_path / "bench", {"clipart/x/b.png": ImageOps.mirror(imgs[i]), "photo/y/g.png": other})
    tower, tag = load_tower()
    ps = pv.prepare_photos(root, photos, tower, tag, bench, tmp_path / "cache", 224)
    assert [d["file"] for d in ps.dropped] == ["things/blue_square.png"]
    assert ps.dropped[0]["benchmark"] == "clipart/x/b.png" and ps.dropped[0]["cosine"] >= pv.COSINE
    assert len(ps.files) == 5 and "blue square" not in ps.captions and int(ps.photo.sum()) == 3
    assert ps.feats.shape == (5, 1280) and list(tmp_path.joinpath("cache").glob("bench-*.safetensors"))
    assert pv.caption_of("animals/eagle-owl.png") == "eagle owl" and pv.caption_of("food/sea_salt.png") == "sea salt"


def test_unbuilt_teacher_is_a_clear_error(tmp_path, monkeypatch):
    from vl2v.errors import UserError
    from vl2v.teachers import create_teacher

    monkeypatch.setenv("VL2V_HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"run `vl2v teacher build mine`"):
        create_teacher("lit:mine")


def test_exclusion_check_finds_a_benchmark_picture(tmp_path):
    from PIL import Image

    pairs = fixture_pairs()
    _, views, h = render_pair((pairs[3], 224))
    other = Image.linear_gradient("L").convert("RGB").resize((224, 224))
    bench = write_benchmark(tmp_path / "bench", {"emoji/x/a.png": Image.fromarray(views["orig"]), "photo/y/b.png": other})
    bh = benchmark_hashes(bench)
    assert len(bh) == 2 and h in bh
    check_exclusion({"fx-other": pixel_hash(Image.new("RGB", (224, 224), (9, 9, 9)))}, bh)  # others pass
    with pytest.raises(BenchmarkOverlapError, match=r"fx-red-ring = emoji/x/a\.png"):
        check_exclusion({pairs[3].id: h, "fx-ok": "0" * 64}, bh)


def test_build_aborts_on_benchmark_overlap(built, tmp_path):
    from PIL import Image

    _, views, _ = render_pair((fixture_pairs()[7], 224))
    bench = write_benchmark(tmp_path / "bench", {"clipart/z/c.png": Image.fromarray(views["orig"])})
    with pytest.raises(BenchmarkOverlapError, match="same pixels as OfflinePACS"):  # (features from the cache)
        build_fixture_teacher(tmp_path, benchmark=bench, features=built.parent / "features")
    assert not (tmp_path / "fixture" / "manifest.json").exists()


def test_excluded_sources_are_refused():
    """Sources of a benchmark family are refused whatever their package name (tests/test_lit_clean.py has more)."""
    from vl2v.teachers.lit_sources import Source, lit_sources

    check_sources(lit_sources())  # the shipped sources pass
    for name, family in (("@iconify-json/twemoji", "twemoji"), ("@iconify-json/noto-v1", "noto"),
                         ("openmoji", "openmoji"), ("@iconify-json/emojione-v1", "emojione"),
                         ("@iconify-json/fluent-emoji-flat", "fluent"), ("some-renamed-pack", "openclipart")):
        with pytest.raises(LiTBuildError, match="OfflinePACS"):
            check_sources([Source("x", name, family)])


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
    assert main(["teacher", "build", "x", "--beta-far", "2"]) == 2
    assert main(["teacher", "build", "x", "--beta-far", "far"]) == 2
    assert "--beta-far takes a number" in capsys.readouterr().err
    assert main(["teacher", "build", "x", "--novelty-width", "0"]) == 2
    capsys.readouterr()
    assert main(["teacher", "build", "x", "--hidden", "-1"]) == 2  # BuildConfig's own range (the config layer)
    assert "vl2v teacher build: --hidden must be >= 0, got -1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["teacher", "build", "x", "--bet", "0.5"])  # no abbreviations
