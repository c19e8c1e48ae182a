"""Iconify JSON -> SVG: set defaults, per-icon boxes, aliases and transformations."""

from __future__ import annotations

import re

import pytest

from vl2v.data.offline.iconify import IconifyError, IconSet

SET = {
    "prefix": "tiny",
    "width": 24,
    "height": 24,
    "icons": {
        "dot": {"body": '<circle cx="12" cy="12" r="6" fill="red"/>'},
        "bar": {"body": '<rect width="10" height="4"/>', "width": 10, "height": 4, "left": 0},
        "shifted": {"body": "<g/>", "left": -2, "top": 3},
    },
    "aliases": {
        "dot-alias": {"parent": "dot"},
        "dot-alias-2": {"parent": "dot-alias"},
        "wide-dot": {"parent": "dot", "width": 48},
        "flipped": {"parent": "dot-alias", "hFlip": True},
        "turned": {"parent": "bar", "rotate": 1},
        "loop-a": {"parent": "loop-b"},
        "loop-b": {"parent": "loop-a"},
    },
}


def viewbox(svg: str) -> str:
    return re.search(r'viewBox="([^"]+)"', svg).group(1)


def test_set_defaults_and_own_box():
    s = IconSet(SET)
    assert viewbox(s.svg("dot")) == "0 0 24 24"
    assert viewbox(s.svg("bar")) == "0 0 10 4"
    assert viewbox(s.svg("shifted")) == "-2 3 24 24"
    assert '<circle cx="12"' in s.svg("dot")


def test_iconify_default_box_without_set_defaults():
    s = IconSet({"icons": {"x": {"body": "<g/>"}}})
    assert viewbox(s.svg("x")) == "0 0 16 16"


def test_aliases_follow_parents_and_override():
    s = IconSet(SET)
    assert s.svg("dot-alias-2") == s.svg("dot")
    assert viewbox(s.svg("wide-dot")) == "0 0 48 24"
    flipped = s.svg("flipped")
    assert 'transform="translate(24 0) scale(-1 1)"' in flipped
    turned = s.resolve("turned")
    assert turned.rotate == 1
    assert viewbox(s.svg("turned")) == "3 -3 4 10"  # box swapped around its centre
    assert "dot-alias" in s and "nope" not in s


def test_unknown_and_looping_names_fail():
    s = IconSet(SET)
    with pytest.raises(IconifyError, match="no icon"):
        s.svg("nope")
    with pytest.raises(IconifyError, match="loop"):
        s.svg("loop-a")


def test_size_attribute_and_renders():
    from vl2v.data.offline.imaging import render_svg

    s = IconSet(SET)
    svg = s.svg("bar", size=100)
    assert 'width="100" height="40"' in svg
    img = render_svg(s.svg("dot"), 64)
    assert img.size == (64, 64)
    r, g, b, a = img.getpixel((32, 32))
    assert (r, a) == (255, 255) and g < 10  # the red dot is drawn
    assert img.getpixel((1, 1))[3] == 0  # outside it stays transparent
