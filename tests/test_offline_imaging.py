"""Preprocessing on synthetic images: white background, crop to content, square pad, PNG bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vl2v.data.offline import imaging


def rgba(w, h, fill=(0, 0, 0, 0)):
    return Image.new("RGBA", (w, h), fill)


def test_alpha_crop_pads_to_square_on_white():
    img = rgba(200, 100)
    img.paste((200, 0, 0, 255), (20, 30, 100, 50))  # an 80x20 red bar on transparency
    out = imaging.prepare(img, 64)
    assert out.box == (20, 30, 100, 50)
    a = np.asarray(out.image)
    assert out.image.mode == "RGB" and out.image.size == (64, 64)
    # Bar spans the full width; white bands above and below (square pad, object centred).
    assert (a[32, 2] == [200, 0, 0]).all() and (a[32, 61] == [200, 0, 0]).all()
    assert (a[2, 32] == 255).all() and (a[61, 32] == 255).all()
    top_band = (a[:, 32] == 255).all(axis=1)
    assert abs(int(top_band[:32].sum()) - int(top_band[32:].sum())) <= 1


def test_faint_alpha_and_white_pixels_do_not_count():
    img = rgba(100, 100)
    img.paste((0, 0, 0, 5), (0, 0, 100, 100))  # an almost invisible haze everywhere
    img.paste((255, 255, 255, 255), (0, 0, 10, 10))  # an opaque white patch
    img.paste((0, 0, 255, 255), (40, 40, 60, 70))
    out = imaging.prepare(img, 32)
    assert out.box == (40, 40, 60, 70)


def test_opaque_image_crops_to_non_white_and_full_frame_photos_stay_whole():
    page = Image.new("RGB", (120, 80), (255, 255, 255))
    page.paste((10, 120, 10), (50, 10, 70, 70))
    assert imaging.prepare(page, 16).box == (50, 10, 70, 70)
    photo = Image.fromarray(np.random.RandomState(0).randint(0, 200, (60, 90, 3), dtype=np.uint8))
    out = imaging.prepare(photo, 30)
    assert out.box == (0, 0, 90, 60)
    a = np.asarray(out.image)
    assert (a[0:2] == 255).all() and (a[-2:] == 255).all()  # letterboxed with white, not stretched


def test_semi_transparent_colour_is_composited_on_white():
    img = rgba(10, 10, (0, 0, 0, 128))
    out = imaging.prepare(img, 10)
    v = np.asarray(out.image)[5, 5]
    assert 120 <= v[0] <= 135 and v[0] == v[1] == v[2]


def test_empty_and_near_empty_renders_are_rejected():
    with pytest.raises(imaging.EmptyImageError):
        imaging.prepare(rgba(50, 50), 32)
    speck = rgba(400, 400)
    speck.paste((0, 0, 0, 255), (10, 10, 12, 12))
    with pytest.raises(imaging.EmptyImageError, match="near-empty"):
        imaging.prepare(speck, 32)


def test_png_encoding_is_deterministic_and_plain():
    img = rgba(40, 30)
    img.paste((1, 2, 3, 255), (5, 5, 20, 25))
    a = imaging.encode_png(imaging.prepare(img, 24).image)
    b = imaging.encode_png(imaging.prepare(img.copy(), 24).image)
    assert a == b
    for chunk in (b"tIME", b"tEXt", b"iTXt", b"zTXt"):
        assert chunk not in a
    assert Image.open(io.BytesIO(a)).size == (24, 24)


def test_dhash_separates_different_pictures():
    a = rgba(64, 64)
    a.paste((0, 0, 0, 255), (0, 0, 32, 64))
    b = rgba(64, 64)
    b.paste((0, 0, 0, 255), (0, 0, 64, 32))
    ha, hb = imaging.dhash(imaging.on_white(a)), imaging.dhash(imaging.on_white(b))
    assert ha == imaging.dhash(imaging.on_white(a.copy()))
    assert bin(ha ^ hb).count("1") > 8


def test_svg_rendering_keeps_aspect_and_handles_percent_sizes():
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="100%" height="100%" viewBox="0 0 20 10">' \
          '<rect x="5" y="2" width="10" height="6" fill="green"/></svg>'
    img = imaging.render_svg(svg, 80)
    assert img.width == 80
    out = imaging.prepare(img, 32)
    assert np.asarray(out.image)[16, 16][1] > 100
