"""Messy folders: every odd file is converted or skipped with its path and reason; strict mode fails instead."""

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import build_image_folder
from vl2v.cli import main
from vl2v.data.images import ImageDecodeError, load_rgb


def bomb_png(width=30000, height=30000) -> bytes:
    """A tiny PNG whose header claims 900 Mpixel (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def write_messy(root: Path) -> dict[str, str]:
    """Add one of every odd case to a valid tiny dataset; return {relative path: expected outcome}."""
    cat = root / "art" / "cat"
    rgb = (np.random.RandomState(0).rand(20, 20, 3) * 255).astype(np.uint8)
    out = {}
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG")
    (cat / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    out["art/cat/truncated.jpg"] = "skipped"
    (cat / "not_an_image.jpg").write_bytes(b"<html>this is not a jpeg</html>")
    out["art/cat/not_an_image.jpg"] = "skipped"
    (cat / "bomb.png").write_bytes(bomb_png())
    out["art/cat/bomb.png"] = "skipped"
    Image.fromarray(rgb).convert("CMYK").save(cat / "cmyk.jpg")
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(cat / "palette.png")
    Image.fromarray((np.arange(400).reshape(20, 20) * 150).astype(np.uint16)).save(cat / "sixteen_bit.png")
    Image.fromarray(np.dstack([rgb, np.full((20, 20), 128, np.uint8)]), "RGBA").save(cat / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(cat / "gray.png")
    Image.fromarray(rgb[:1, :1]).save(cat / "one_pixel.png")
    Image.fromarray(rgb).save(cat / "ünïcødé name with spaces.png")
    for f in ["cmyk.jpg", "palette.png", "sixteen_bit.png", "rgba.png", "gray.png", "one_pixel.png", "ünïcødé name with spaces.png"]:
        out[f"art/cat/{f}"] = "loaded"
    os.symlink(cat, cat / "loop")  # a symlink loop
    out["art/cat/loop"] = "skipped"
    for f in (root / "sketch" / "horse").iterdir():  # an empty class folder
        f.unlink()
    out["sketch/horse"] = "warning"
    (root / "photo" / "horse").rename(root / "photo" / ".hidden_horse")  # class 'horse' missing in photo
    out["photo/horse"] = "warning"
    return out


@pytest.mark.parametrize("fmt,mode", [("png", "P"), ("png", "I;16"), ("png", "RGBA"), ("png", "LA"), ("jpeg", "CMYK"),
                                      ("png", "L"), ("png", "1")])
def test_load_rgb_converts_every_mode(tmp_path, fmt, mode):
    rgb = (np.random.RandomState(1).rand(8, 8, 3) * 255).astype(np.uint8)
    img = Image.fromarray(rgb).convert("RGBA" if mode in ("RGBA", "LA") else "RGB")
    img = img.convert(mode) if mode not in ("I;16",) else Image.fromarray((rgb[..., 0].astype(np.uint16) * 257))
    path = tmp_path / f"x.{fmt}"
    img.save(path)
    out = load_rgb(path)
    assert out.mode == "RGB" and out.size == (8, 8)


def test_bomb_is_refused_before_decoding(tmp_path):
    p = tmp_path / "b.png"
    p.write_bytes(bomb_png())
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        load_rgb(p)


def test_training_on_a_messy_folder_records_every_skip(tmp_path, capsys):
    root = build_image_folder(tmp_path / "messy")
    expected = write_messy(root)
    out = tmp_path / "runs"
    args = ["train", "--data", str(root), "--algorithm", "erm_lp", "--target", "art", "--teacher", "tiny-test",
            "--store", "memory", "--no-pretrained", "--frozen-steps", "2", "--batch-size", "2", "--image-size", "32",
            "--out", str(out)]
    assert main(args) == 0
    screen = capsys.readouterr()
    issues = {i["path"]: i for i in json.loads((out / "experiment.json").read_text())["data_issues"]}
    for path, outcome in expected.items():
        if outcome == "loaded":
            assert path not in issues
        else:
            assert path in issues, path
            assert issues[path]["kind"] == outcome
            assert path in screen.out  # and on screen
    assert "bomb" in issues["art/cat/bomb.png"]["reason"]
    assert "truncated" in issues["art/cat/truncated.jpg"]["reason"]
    assert "not an image" in issues["art/cat/not_an_image.jpg"]["reason"]
    assert "symlink loop" in issues["art/cat/loop"]["reason"]
    # converted files were trained on: the bank has the valid images plus the 7 odd-but-readable ones
    cfg = json.loads(next(out.rglob("config.json")).read_text())
    assert cfg["classes"] == ["cat", "dog", "horse"]

    # strict mode refuses the same folder, naming the problems
    assert main(args + ["--strict-data", "--out", str(tmp_path / "strict")]) == 2
    err = capsys.readouterr().err
    for path in ("art/cat/bomb.png", "art/cat/truncated.jpg", "sketch/horse"):
        assert path in err
