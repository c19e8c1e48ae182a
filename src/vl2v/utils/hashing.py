"""Content hashes: of a file (read in chunks), of bytes, of a JSON-able value, of a folder of files.

Every hex digest in vl2v that names file contents (weights tags in teacher
identities, exported-model sidecars, download checks) comes from here, so the
same file always gives the same string.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str], algo: str = "sha256", chunk: int = CHUNK) -> str:
    """Hex digest of a file's bytes, read ``chunk`` bytes at a time."""
    h = hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


_MEMO: dict[tuple[str, int, int, str], str] = {}


def cached_file_digest(path: str | os.PathLike[str], algo: str = "sha256") -> str:
    """:func:`file_digest`, memoised by (path, size, mtime) for the life of the process (large weights files)."""
    st = os.stat(path)
    key = (str(path), st.st_size, int(st.st_mtime_ns), algo)
    if key not in _MEMO:
        _MEMO[key] = file_digest(path, algo)
    return _MEMO[key]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_text(text: str) -> str:
    """SHA-256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(value: Any) -> str:
    """SHA-256 of ``json.dumps(value)`` (default separators, keys in given order)."""
    return sha256_text(json.dumps(value))


def files_digest(root: Path, files: Iterable[Path], digest: Callable[[Path], str] = cached_file_digest) -> str:
    """SHA-256 over (relative path, file digest) of ``files`` under ``root``, in the order given."""
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0" + digest(p).encode() + b"\0")
    return h.hexdigest()
