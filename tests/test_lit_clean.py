"""The LiT teacher never trains on the benchmark: design families (every OfflinePACS pin and LiT source names
its artwork family; no LiT image source is of a benchmark family), the near-duplicate drop over every training
view, and the refusal to build without a built benchmark unless --no-benchmark-check says so."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from helpers import build_fixture_teacher, fixture_benchmark, fixture_pairs, fixture_pool
from vl2v.teachers.lit_common import LiTBuildError
from vl2v.teachers.lit_sources import (
    NO_ARTWORK,
    Source,
    benchmark_families,
    benchmark_sources,
    check_sources,
    lit_sources,
)


def _json(package: str, name: str) -> dict:
    return json.loads(resources.files(package).joinpath(name).read_text("utf-8"))


def test_every_pin_and_source_has_a_family_and_none_is_a_benchmark_family():
    pins, spec = _json("vl2v.data.offline", "pins.json"), _json("vl2v.teachers", "lit_sources.json")
    entries = pins["packages"] + spec["packages"] + [spec["photo_validation"]["pin"]]
    assert all(isinstance(e.get("family"), str) and e["family"] for e in entries), \
        [e["key"] for e in entries if not e.get("family")]
    bench = benchmark_families()
    assert bench["fluent"].name == "@lobehub/fluent-emoji-3d" and NO_ARTWORK not in bench
    images = [s for s in lit_sources(spec) if s.images]
    assert images and not {s.family for s in images} & set(bench), [(s.name, s.family) for s in images]
    assert all(s.family != NO_ARTWORK for s in images)  # names-only packages are never image sources
    assert {s.key for s in lit_sources(spec) if not s.images} == {spec["captions"]}
    # the Fluent Emoji styles OfflinePACS shows in 3D are gone, and no set refers to a dropped package
    names = {e["name"] for e in spec["packages"]}
    assert not names & {"@iconify-json/fluent-emoji-flat", "@iconify-json/fluent-emoji-high-contrast"}
    assert set(spec["sets"]) <= {e["key"] for e in spec["packages"]}
    check_sources(lit_sources(spec))  # the shipped sources pass
    from vl2v.data.offline.fetch import load_pins

    assert {p.key: p.family for p in load_pins()}["fluent3d"] == "fluent"  # the benchmark build still reads its pins


def test_family_check_refuses_a_benchmark_family_whatever_the_name():
    bench = benchmark_sources()
    flat = Source("fluentflat", "@iconify-json/fluent-emoji-flat", "fluent")
    with pytest.raises(LiTBuildError) as exc:
        check_sources([flat], bench)
    msg = str(exc.value)
    assert "\n" not in msg and "@iconify-json/fluent-emoji-flat" in msg and "'fluent'" in msg
    assert "@lobehub/fluent-emoji-3d" in msg
    with pytest.raises(LiTBuildError, match=r"'noto'.*@iconify-json/noto"):  # a renamed package, same designs
        check_sources([Source("x", "my-emoji-pictures", "noto")], bench)
    with pytest.raises(LiTBuildError, match="no artwork family"):
        check_sources([Source("x", "some-icons", "")], bench)
    with pytest.raises(LiTBuildError, match="used for images"):
        check_sources([Source("x", "some-icons", NO_ARTWORK)], bench)
    with pytest.raises(LiTBuildError, match="OfflinePACS"):  # a benchmark package itself, whatever its family says
        check_sources([Source("x", "@iconify-json/twemoji", "other")], bench)
    check_sources([Source("emojidata", "emoji-datasource", NO_ARTWORK, images=False),
                   Source("fx", "@iconify-json/fxemoji", "fxemoji")], bench)


def test_build_refuses_a_pool_of_a_benchmark_family(tmp_path):
    with pytest.raises(LiTBuildError, match=r"generated-shapes .*'fluent'.*@lobehub/fluent-emoji-3d"):
        build_fixture_teacher(tmp_path, pool=fixture_pool(family="fluent"))
    with pytest.raises(LiTBuildError, match="no artwork family"):
        build_fixture_teacher(tmp_path, pool=fixture_pool(family=""))
    assert not (tmp_path / "features").exists()  # refused before any rendering


def test_build_refuses_without_a_built_benchmark(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for bench in (tmp_path / "missing", empty):
        with pytest.raises(LiTBuildError) as exc:
            build_fixture_teacher(tmp_path, benchmark=bench)
        msg = str(exc.value)
        assert str(bench) in msg and "`vl2v data build OfflinePACS`" in msg and "--no-benchmark-check" in msg
    assert not (tmp_path / "features").exists() and not (tmp_path / "fixture").exists()


def test_cli_refuses_without_a_benchmark_and_takes_the_flag(tmp_path, monkeypatch, capsys):
    from vl2v.cli import main

    monkeypatch.setenv("VL2V_HOME", str(tmp_path))
    monkeypatch.delenv("VL2V_DATA", raising=False)
    assert main(["teacher", "build", "x", "--no-photo-validation"]) == 2  # before any fetch
    err = capsys.readouterr().err
    assert "vl2v data build OfflinePACS" in err and "--no-benchmark-check" in err
    assert not (tmp_path / "packages").exists()
    assert main(["teacher", "build", "x", "--no-benchmark-check", "--epochs", "0"]) == 2  # the flag parses


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return tmp_path_factory.mktemp("lit-clean-features")


def test_no_benchmark_check_flag_builds_and_says_so(tmp_path, features):
    folder = build_fixture_teacher(tmp_path, benchmark_check=False, features=features)
    man = json.loads((folder / "manifest.json").read_text())
    assert man["benchmark_check"] == "skipped by flag"
    assert "skipped" in man["exclusion_check"] and "skipped" in man["near_duplicate_check"]
    assert "skipped" in man["photo_validation"]["near_duplicate_check"]
    assert man["counts"]["pairs"] == 30 and man["counts"]["near_duplicates_dropped"] is None


def test_near_duplicates_of_training_icons_are_dropped_and_listed(tmp_path, features):
    """A benchmark holding a re-render of a training icon (another size, not the same pixels): the icon is
    dropped before training, with every view that matched, and listed with the benchmark image, cosine and
    dhash distance; the count is logged."""
    from PIL import Image

    from vl2v.teachers.lit_build import render_pair
    from vl2v.teachers.lit_overlap import COSINE, DHASH_BITS

    red = next(p for p in fixture_pairs() if p.id == "fx-red-circle")
    _, views, _ = render_pair((red, 160))
    copy = Image.fromarray(views["orig"]).resize((224, 224), Image.Resampling.BICUBIC)
    bench = fixture_benchmark(tmp_path / "bench", {"emoji/circle/copy.png": copy})
    lines: list[str] = []
    folder = build_fixture_teacher(tmp_path, benchmark=bench, features=features, log=lines.append)
    man = json.loads((folder / "manifest.json").read_text())
    nd = man["near_duplicate_check"]
    assert nd["cosine_at_least"] == COSINE == 0.85 and nd["dhash_bits_at_most"] == DHASH_BITS == 4
    assert man["exclusion_check"]["overlaps"] == 0  # not the same pixels: only the near-duplicate check sees it
    hit = [m for m in nd["matches"] if m["icon"] == "fx-red-circle" and m["view"] == "orig"]
    assert hit and hit[0]["benchmark"] == "emoji/circle/copy.png" and hit[0]["cosine"] >= COSINE
    assert hit[0]["caption"] == "red circle" and hit[0]["member"] == "fixture#red-circle"
    dropped = {m["icon"] for m in nd["matches"]}
    assert all(m["benchmark"] == "emoji/circle/copy.png" for m in nd["matches"])
    assert all(m["cosine"] >= COSINE or m["dhash_bits"] <= DHASH_BITS for m in nd["matches"])
    assert all(i.endswith("-circle") for i in dropped)  # only circles look like it
    assert nd["dropped_icons"] == len(dropped) == man["counts"]["near_duplicates_dropped"]
    assert man["counts"]["pairs"] == 30 - len(dropped)
    assert nd["views_checked"] > man["counts"]["final_views"]  # the dropped icons' views are not trained on
    assert any(f"{len(dropped)} icons" in s and "near-duplicates" in s for s in lines)
