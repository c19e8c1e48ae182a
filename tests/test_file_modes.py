"""Files written through the atomic-write helper get the mode a plain ``open()`` would give (issue: 0600 always)."""

from __future__ import annotations

import os
import stat

import pytest

from vl2v.utils.io import atomic_write_json, atomic_write_text, current_umask


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_file_follows_umask(tmp_path, umask, mask):
    umask(mask)
    assert current_umask() == mask
    p = tmp_path / "report.md"
    atomic_write_text(p, "x")
    plain = tmp_path / "plain.md"
    plain.write_text("x")
    assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~mask


def test_existing_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "config.json"
    p.write_text("{}")
    p.chmod(0o640)
    atomic_write_json(p, {"a": 1})
    assert stat.S_IMODE(p.stat().st_mode) == 0o640
    assert p.read_text().strip().startswith("{")


def test_readable_by_others_under_022(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "report.html"
    atomic_write_text(p, "<html></html>")
    assert p.stat().st_mode & stat.S_IROTH
