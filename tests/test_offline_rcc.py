"""The Qt .rcc reader, on bundles written byte by byte here following the format."""

from __future__ import annotations

import struct
import zlib

import pytest

from vl2v.data.offline.rcc import FLAG_DIR, FLAG_ZLIB, RccError, RccReader


def make_rcc(files: dict[str, tuple[bytes, bool]], version: int = 3) -> bytes:
    """Write an rcc bundle: ``files`` maps 'dir/name' -> (bytes, zlib-compress?)."""
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
