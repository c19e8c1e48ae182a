"""A reader for Qt's binary resource bundles (``.rcc``, format versions 1-3).

Layout (all integers big-endian), as Qt's ``rcc`` tool writes it:

* header: ``b"qres"``, version (u32), tree offset (u32), data offset (u32),
  names offset (u32), and from version 3 on an overall-flags word (u32);
* names: at a name offset, a u16 length in UTF-16 code units, a u32 hash, then
  the name as UTF-16BE;
* tree: fixed-size nodes (14 bytes in version 1, 22 from version 2, which
  appends a u64 modification time). Node 0 is the root directory. Each node is
  name offset (u32) + flags (u16) and then either, for a directory (flag 0x02),
  child count (u32) + index of the first child node (u32), or, for a file,
  territory (u16) + language (u16) + data offset (u32);
* data: at a data offset, a u32 size then that many bytes. Flag 0x01 means
  zlib as ``qCompress`` writes it (a u32 uncompressed size, then a zlib stream);
  flag 0x04 means one zstd frame (needs the optional ``zstandard`` module).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MAGIC = b"qres"
FLAG_ZLIB = 0x01
FLAG_DIR = 0x02
FLAG_ZSTD = 0x04


class RccError(ValueError):
    """The bytes are not a readable Qt resource bundle."""


@dataclass(frozen=True)
class RccEntry:
    path: str  # '/'-separated, no leading slash
    flags: int
    data_offset: int

    @property
    def compression(self) -> str:
        if self.flags & FLAG_ZSTD:
            return "zstd"
        if self.flags & FLAG_ZLIB:
            return "zlib"
        return "none"


class RccReader:
    """Random access to the files of one ``.rcc`` bundle held in memory."""

    def __init__(self, data: bytes, *, name: str = "<rcc>") -> None:
        self.name = name
        self._b = data
        if len(data) < 20 or data[:4] != MAGIC:
            raise RccError(f"{name}: not a Qt resource bundle (no 'qres' magic)")
        self.version, self.tree_off, self.data_off, self.names_off = struct.unpack_from(">IIII", data, 4)
        if self.version not in (1, 2, 3):
            raise RccError(f"{name}: unsupported rcc format version {self.version}")
        self.overall_flags = struct.unpack_from(">I", data, 20)[0] if self.version >= 3 else 0
        self.node_size = 14 if self.version == 1 else 22
        self._entries: dict[str, RccEntry] | None = None

    @classmethod
    def open(cls, path: str | Path) -> "RccReader":
        p = Path(path)
        return cls(p.read_bytes(), name=p.name)

    # ------------------------------------------------------------------ parsing
    def _u16(self, off: int) -> int:
        return struct.unpack_from(">H", self._b, off)[0]

    def _u32(self, off: int) -> int:
        return struct.unpack_from(">I", self._b, off)[0]

    def _name(self, name_off: int) -> str:
        off = self.names_off + name_off
        n = self._u16(off)
        raw = self._b[off + 6: off + 6 + 2 * n]
        if len(raw) != 2 * n:
            raise RccError(f"{self.name}: name at offset {name_off} runs past the end")
        return raw.decode("utf-16-be")

    def _node(self, index: int) -> tuple[int, int, int, int]:
        off = self.tree_off + index * self.node_size
        if off + 14 > len(self._b):
            raise RccError(f"{self.name}: tree node {index} runs past the end")
        name_off = self._u32(off)
        flags = self._u16(off + 4)
        if flags & FLAG_DIR:
            return name_off, flags, self._u32(off + 6), self._u32(off + 10)
        return name_off, flags, 0, self._u32(off + 10)

    def entries(self) -> dict[str, RccEntry]:
        """Every file in the bundle, keyed by its path, in sorted order."""
        if self._entries is None:
            found: dict[str, RccEntry] = {}
            stack: list[tuple[int, str]] = [(0, "")]
            seen: set[int] = set()
            while stack:
                idx, prefix = stack.pop()
                if idx in seen:
                    raise RccError(f"{self.name}: tree has a cycle at node {idx}")
                seen.add(idx)
                _, flags, count, first = self._node(idx)
                if not flags & FLAG_DIR:
                    raise RccError(f"{self.name}: node {idx} should be a directory")
                for child in range(first, first + count):
                    name_off, cflags, _, data_off = self._node(child)
                    path = f"{prefix}{self._name(name_off)}"
                    if cflags & FLAG_DIR:
                        stack.append((child, path + "/"))
                    else:
                        found[path] = RccEntry(path, cflags, data_off)
            self._entries = dict(sorted(found.items()))
        return self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries())

    def read(self, path: str) -> bytes:
        """The (decompressed) bytes of the file at ``path``."""
        entry = self.entries().get(path.lstrip("/").removeprefix(":/"))
        if entry is None:
            raise KeyError(f"{self.name}: no file {path!r}")
        off = self.data_off + entry.data_offset
        size = self._u32(off)
        blob = self._b[off + 4: off + 4 + size]
        if len(blob) != size:
            raise RccError(f"{self.name}: data of {path!r} runs past the end")
        if entry.flags & FLAG_ZSTD:
            try:
                import zstandard  # optional: Qt only writes zstd when built with it
            except ImportError as exc:  # pragma: no cover - depends on the machine
                raise RccError(f"{self.name}: {path!r} is zstd-compressed; pip install zstandard") from exc
            return zstandard.ZstdDecompressor().decompress(blob, max_output_size=1 << 30)
        if entry.flags & FLAG_ZLIB:
            expected = struct.unpack_from(">I", blob, 0)[0]
            out = zlib.decompress(blob[4:])
            if len(out) != expected:
                raise RccError(f"{self.name}: {path!r} inflated to {len(out)} bytes, header says {expected}")
            return out
        return blob
