"""The Qt .rcc reader, on bundles written byte by byte here following the format."""

from __future__ import annotations

import struct

import pytest

from helpers import make_rcc
from vl2v.data.offline.rcc import RccError, RccReader

FILES = {
    "gcompris/src/animals/README": (b"Copyright: someone\nFiles:\ncat.webp\n", False),
    "gcompris/src/animals/cat.webp": (b"RIFF" + bytes(range(200)), True),
    "gcompris/src/animals/dog.svg": (b"<svg/>", False),
    "gcompris/src/top.txt": ("ünïcode".encode(), True),
}


@pytest.mark.parametrize("version", [1, 2, 3])
def test_reads_tree_and_data(version):
    r = RccReader(make_rcc(FILES, version), name="t.rcc")
    assert r.version == version
    assert list(r) == sorted(FILES)
    for path, (payload, compressed) in FILES.items():
        assert r.read(path) == payload
        assert r.entries()[path].compression == ("zlib" if compressed else "none")
    assert r.read(":/gcompris/src/top.txt") == "ünïcode".encode()  # Qt-style resource path


def test_unicode_names_and_missing_file():
    r = RccReader(make_rcc({"d/é.txt": (b"x", False)}))
    assert list(r) == ["d/é.txt"]
    with pytest.raises(KeyError):
        r.read("d/nope.txt")


def test_rejects_bad_bytes():
    with pytest.raises(RccError, match="magic"):
        RccReader(b"not an rcc file at all....")
    blob = bytearray(make_rcc(FILES))
    blob[4:8] = struct.pack(">I", 9)  # unknown version
    with pytest.raises(RccError, match="version"):
        RccReader(bytes(blob))


def test_detects_corrupt_zlib_size():
    blob = make_rcc({"a.bin": (b"hello" * 10, True)})
    r = RccReader(blob)
    off = r.data_off + r.entries()["a.bin"].data_offset + 4
    bad = bytearray(blob)
    bad[off:off + 4] = struct.pack(">I", 7)  # header claims 7 uncompressed bytes
    with pytest.raises(RccError, match="inflated"):
        RccReader(bytes(bad)).read("a.bin")
