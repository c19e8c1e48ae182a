"""End-to-end OfflinePACS build on a tiny fake package cache (no network, no real packages).

Fixture archives (.deb and npm .tgz) are written here; the npm/apt-get clients are
monkeypatched to "download" them, so the real fetch -> verify -> unpack -> label ->
render -> write path runs, fast.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import pytest
from PIL import Image, ImageDraw

from helpers import make_rcc
from vl2v.data.offline import build as build_mod
from vl2v.data.offline import fetch
from vl2v.data.offline.fetch import FetchError, PackageCache, PackagePin

SIZE = 32


# ------------------------------------------------------------------ archive writers
def _tar(members: dict[str, bytes | str], mode: str) -> bytes:
    """Tar with regular files (bytes) and symlinks (str target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, content in sorted(members.items()):
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tf.addfile(info)
            else:
                info.size = len(content)
                tf.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def make_deb(members: dict[str, bytes | str]) -> bytes:
    def ar_member(name: str, data: bytes) -> bytes:
        hdr = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
        return hdr + data + (b"\n" if len(data) % 2 else b"")

    return (b"!<arch>\n" + ar_member("debian-binary", b"2.0\n")
            + ar_member("control.tar.xz", _tar({"./control": b"Package: fake\n"}, "w:xz"))
            + ar_member("data.tar.xz", _tar({f"./{k}": v for k, v in members.items()}, "w:xz")))


def make_tgz(members: dict[str, bytes]) -> bytes:
    return _tar({f"package/{k}": v for k, v in members.items()}, "w:gz")


def png(colour, shape="ellipse", size=(60, 40), fmt="PNG") -> bytes:
    im = Image.new("RGBA", size, (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    getattr(d, shape)((8, 6, size[0] - 8, size[1] - 6), fill=colour)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def svg(colour, shape="circle") -> bytes:
    body = (f'<circle cx="50" cy="40" r="20" fill="{colour}"/>' if shape == "circle"
            else f'<rect x="10" y="30" width="70" height="20" fill="{colour}"/>')
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">{body}</svg>'.encode()


def iconify(icons: dict[str, str], aliases: dict | None = None, chars: dict | None = None, size=36) -> dict:
    return {
        "icons.json": json.dumps({"prefix": "x", "width": size, "height": size,
                                  "icons": {k: {"body": v} for k, v in icons.items()},
                                  "aliases": aliases or {}}).encode(),
        "chars.json": json.dumps(chars or {}).encode(),
    }


def fixture_archives() -> dict[str, tuple[PackagePin, bytes]]:
    stamps = "usr/share/tuxpaint/stamps"
    clip = "usr/share/openclipart/svg"
    farm = "gcompris/src/activities/explore_farm_animals/resource/animals"
    rcc = make_rcc({
        f"{farm}/README": (b"Copyright: Jane Doe\nLicense: CC0-1.0\nSource: https://example.org/hen\n"
                           b"Files:\nchicken.webp\n", False),
        f"{farm}/chicken.webp": (png((180, 120, 40, 255), "rectangle", (80, 50), "WEBP")
                                 if "WEBP" in Image.SAVE else png((180, 120, 40, 255), "rectangle", (80, 50)), True),
        f"{farm}/apple.webp": (png((200, 0, 0, 255), "rectangle", (50, 50)), False),
    })
    bird = '<path d="M4 18 L18 4 L32 18 Z" fill="#3b88c3"/>'
    apple = '<circle cx="18" cy="20" r="12" fill="#dd2e44"/>'
    emoji_json = [
        {"unified": "1F426", "non_qualified": None, "short_name": "bird", "subcategory": "animal-bird", "sort_order": 1},
        {"unified": "1FAB6", "non_qualified": None, "short_name": "feather", "subcategory": "animal-bird", "sort_order": 2},
        {"unified": "1F34E", "non_qualified": None, "short_name": "apple", "subcategory": "food-fruit", "sort_order": 3},
        {"unified": "1F600", "non_qualified": None, "short_name": "grinning", "subcategory": "face-smiling", "sort_order": 0},
    ]
    chars = {"1f426": "bird", "1fab6": "feather", "1f34e": "red-apple"}
    specs = {
        "tuxpaint": ("deb", "tuxpaint-stamps-default", "2022.06.04-1", "GPL-2", make_deb({
            f"{stamps}/animals/birds/owl.png": png((90, 60, 30, 255)),
            f"{stamps}/animals/birds/cartoon/owl.png": png((10, 10, 10, 255)),  # drawing: skipped
            f"{stamps}/food/fruit/apple_red.png": png((220, 20, 20, 255), "rectangle"),
            f"{stamps}/food/fruit/apple_red.ogg": b"OggS",  # not extracted
            f"{stamps}/food/vegetables/tomato.png": png((250, 40, 10, 255), "ellipse", (50, 50)),
        })),
        "openclipart": ("deb", "openclipart-svg", "1:0.18+dfsg-19", "public domain", make_deb({
            f"{clip}/animals/birds/duck_01.svg": svg("gold"),
            f"{clip}/animals/birds/duck_copy.svg": "duck_01.svg",  # a Debian symlink: same bytes
            f"{clip}/food/fruit/pear_01.svg": svg("yellowgreen", "rect"),
            f"{clip}/food/fruit/pear_juice_box.svg": svg("orange", "rect"),  # negative word
            f"{clip}/food/fruit/bad.svg": b"<svg broken",  # reported, not fatal
        })),
        "gcompris": ("deb", "gcompris-qt-data", "3.1-2", "GPL-3+", make_deb({
            "usr/share/gcompris-qt/rcc/explore_farm_animals.rcc": rcc,
        })),
        "emojidata": ("npm", "emoji-datasource", "16.0.0", "MIT", make_tgz({"emoji.json": json.dumps(emoji_json).encode()})),
        "noto": ("npm", "@iconify-json/noto", "1.2.9", "Apache-2.0", make_tgz(
            iconify({"bird": bird, "red-apple": apple, "feather": bird}, chars=chars, size=36))),
        "twemoji": ("npm", "@iconify-json/twemoji", "1.2.5", "CC-BY-4.0", make_tgz(
            iconify({"bird-base": bird.replace("3b88c3", "55acee"), "red-apple": apple},
                    aliases={"bird": {"parent": "bird-base"}}, chars=chars))),
        "emojione": ("npm", "@iconify-json/emojione-monotone", "1.2.1", "CC-BY-4.0", make_tgz(
            iconify({"bird": bird.replace("#3b88c3", "#000"), "red-apple": apple.replace("#dd2e44", "#000")}))),
        "openmoji": ("npm", "openmoji", "17.0.0", "CC-BY-SA-4.0", make_tgz({
            "black/svg/1F426.svg": svg("black", "rect"), "black/svg/1F34E.svg": svg("black"),
        })),
        "fluent3d": ("npm", "@lobehub/fluent-emoji-3d", "1.1.0", "MIT", make_tgz({
            "assets/1f426.png": png((120, 120, 250, 255)), "assets/1f34e.png": png((250, 80, 80, 255), "rectangle"),
        })),
    }
    out = {}
    for key, (kind, name, version, licence, blob) in specs.items():
        out[key] = (PackagePin(key=key, name=name, version=version, kind=kind, licence=licence,
                               credit=f"{name} authors"), blob)
    return out


def tiny_rules() -> dict:
    from vl2v.data.offline.labels import load_rules

    rules = load_rules()
    rules["classes"] = ["bird", "fruit"]
    rules["emoji"]["subgroups"] = {"animal-bird": "bird", "food-fruit": "fruit"}
    rules["sources"]["gcompris"]["entries"] = rules["sources"]["gcompris"]["entries"][:1]
    rules["emoji_sources"].pop("symbola")  # no font in the fixtures
    rules["emoji_sources"]["fluent3d"]["pattern"] = "{lower}.png"
    return rules


@pytest.fixture
def fake_registry(tmp_path, monkeypatch):
    """Archives served by monkeypatched npm/apt-get; returns (pins, calls)."""
    archives = fixture_archives()
    calls: list[str] = []

    def fake_npm(pin, cache):
        calls.append(f"npm pack {pin.name}@{pin.version}")
        path = cache.archive_path(pin)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(archives[pin.key][1])
        return path

    def fake_update(pins, cache):
        calls.append("apt-get update")

    def fake_download(pin, cache):
        calls.append(f"apt-get download {pin.name}={pin.version}")
        path = cache.archive_path(pin)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(archives[pin.key][1])
        return path

    monkeypatch.setattr(fetch, "npm_pack", fake_npm)
    monkeypatch.setattr(fetch, "apt_update", fake_update)
    monkeypatch.setattr(fetch, "apt_download", fake_download)
    return [pin for pin, _ in archives.values()], calls, archives


def run_build(dest, cache, pins, **kw):
    return build_mod.build_offline_pacs(dest, cache_dir=cache, image_size=SIZE, pins=pins, rules=tiny_rules(),
                                        curation={}, workers=1, **kw)


def test_end_to_end_build_is_complete_and_deterministic(tmp_path, fake_registry):
    pins, calls, _ = fake_registry
    cache, dest = tmp_path / "cache", tmp_path / "data" / "offline_pacs"
    s1 = run_build(dest, cache, pins)
    assert calls.count("apt-get update") == 1 and len(calls) == 1 + len(pins)

    rows = [json.loads(line) for line in (dest / "manifest.jsonl").read_text().splitlines()]
    paths = [r["path"] for r in rows]
    assert paths == sorted(paths) and len(rows) == s1["images"]
    cells = {(r["domain"], r["class"]) for r in rows}
    assert cells == {(d, c) for d in ("clipart", "emoji", "photo", "sketch") for c in ("bird", "fruit")}
    by_id = {r["id"]: r for r in rows}
    # Labels: folder rules, Unicode override (tomato -> fruit), concept words in GCompris,
    # drop list (feather), skipped cartoon folder, negative words, symlink de-duplicated.
    assert by_id["tuxpaint-tomato"]["class"] == "fruit"
    assert by_id["gcompris-chicken"]["class"] == "bird" and by_id["gcompris-apple"]["class"] == "fruit"
    assert not any("feather" in i for i in by_id)
    assert not any("cartoon" in r["file"] for r in rows)
    assert not any("juice" in i for i in by_id)
    assert sum("duck" in i for i in by_id) == 1
    assert {"twemoji-bird", "noto-apple", "emojione-bird", "openmoji-apple", "fluent3d-bird"} <= set(by_id)
    for r in rows:  # files are what the manifest says, RGB squares of the asked size
        data = (dest / r["path"]).read_bytes()
        assert build_mod.sha256_bytes(data) == r["sha256"]
        im = Image.open(io.BytesIO(data))
        assert im.size == (SIZE, SIZE) and im.mode == "RGB"
        assert r["package"] and r["version"] and r["licence"] and r["file"]
    # Layout: domain folders and three files only; contact sheets live beside the dataset.
    assert sorted(p.name for p in dest.iterdir()) == ["ATTRIBUTION.md", "build_info.json", "clipart", "emoji",
                                                      "manifest.jsonl", "photo", "sketch"]
    assert (dest.parent / "offline_pacs_contact_sheets" / "photo_bird_1.png").is_file()
    attribution = (dest / "ATTRIBUTION.md").read_text()
    assert "gcompris-qt-data" in attribution and "Jane Doe" in attribution and "CC0-1.0" in attribution
    info = json.loads((dest / "build_info.json").read_text())
    assert any("bad.svg" in s["member"] and s["reason"].startswith("render failed") for s in info["skipped"])
    assert "text" in s1 and "bird" in s1["text"] and "build time" in s1["text"]

    # Up to date: a second call returns at once without touching anything.
    before = (dest / "manifest.jsonl").read_bytes()
    s2 = run_build(dest, cache, pins)
    assert s2.get("skipped_build") and "already built" in s2["text"]

    # Rebuild from scratch with an empty render cache: byte-identical manifest.
    shutil.rmtree(cache / "rendered")
    run_build(dest, cache, pins, force=True, contact_sheets=False)
    assert (dest / "manifest.jsonl").read_bytes() == before
    assert len(calls) == 1 + len(pins)  # cached archives were reused, nothing fetched again


def test_changed_upstream_bytes_are_refused(tmp_path, fake_registry):
    pins, _, archives = fake_registry
    cache = tmp_path / "cache"
    run_build(tmp_path / "d" / "offline_pacs", cache, pins, contact_sheets=False)
    pc = PackageCache(cache)
    noto = next(p for p in pins if p.key == "noto")
    assert pc.expected_sha256(noto) == build_mod.sha256_bytes(archives["noto"][1])  # recorded on first fetch
    pc.archive_path(noto).write_bytes(archives["noto"][1] + b"tampered")
    with pytest.raises(FetchError, match="sha256"):
        run_build(tmp_path / "d2" / "offline_pacs", cache, pins, contact_sheets=False)


def test_interrupted_build_leaves_no_dataset(tmp_path, fake_registry, monkeypatch):
    pins, _, _ = fake_registry
    dest = tmp_path / "data" / "offline_pacs"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build_mod, "attribution_markdown", boom)
    with pytest.raises(KeyboardInterrupt):
        run_build(dest, tmp_path / "cache", pins)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == []  # no half-built temp folder left


def test_missing_clients_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(fetch.shutil, "which", lambda name: None)
    cache = PackageCache(tmp_path)
    npm_pin = PackagePin("noto", "@iconify-json/noto", "1.2.9", "npm", "Apache-2.0")
    deb_pin = PackagePin("symbola", "fonts-symbola", "2.60-1.1", "deb", "free")
    with pytest.raises(FetchError, match=r"`npm` is not installed.*@iconify-json/noto 1\.2\.9.*iconify-json-noto-1\.2\.9\.tgz"):
        fetch.fetch_packages([npm_pin], cache)
    with pytest.raises(FetchError, match=r"`apt-get` is not installed.*fonts-symbola 2\.60-1\.1"):
        fetch.fetch_packages([deb_pin], cache)
    assert cache.archive_name(PackagePin("o", "openclipart-svg", "1:0.18+dfsg-19", "deb", "")) == \
        "openclipart-svg_1%3a0.18+dfsg-19_all.deb"


def test_failed_client_command_names_the_package(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setattr(fetch.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 1, "", "npm error 404 Not Found - GET .../openmoji/-/openmoji-99.tgz"))
    pin = PackagePin("openmoji", "openmoji", "99", "npm", "CC-BY-SA-4.0")
    with pytest.raises(FetchError, match=r"(?s)fetching npm package openmoji 99.*exit 1.*404.*reachable"):
        fetch.fetch_packages([pin], PackageCache(tmp_path))


def test_registry_entry_is_light_and_wired():
    import subprocess
    import sys

    code = ("import sys; from vl2v.data.registry import get_dataset; s = get_dataset('OfflinePACS'); "
            "assert s.domains == ('clipart', 'emoji', 'photo', 'sketch') and s.num_classes == 9; "
            "assert s.builder is not None and s.subdir == 'offline_pacs'; "
            "assert sum(s.expected_images.values()) == s.total_images; "
            "bad = [m for m in ('torch', 'cairosvg', 'PIL', 'numpy') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, env={**__import__("os").environ})
