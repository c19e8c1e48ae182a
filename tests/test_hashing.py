"""vl2v.utils.hashing: the one place file and content digests come from."""

from __future__ import annotations

import hashlib
import json
import os

from vl2v.utils.hashing import cached_file_digest, file_digest, files_digest, sha256_bytes, sha256_json, sha256_text


def test_file_digest_matches_hashlib_whatever_the_chunk(tmp_path):
    data = os.urandom(3 * 1024 + 17)
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    assert file_digest(p) == want == sha256_bytes(data)
    assert file_digest(str(p), chunk=1000) == want
    assert file_digest(p, algo="md5") == hashlib.md5(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert file_digest(empty) == hashlib.sha256(b"").hexdigest()


def test_cached_digest_follows_file_changes(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"one")
    assert cached_file_digest(p) == sha256_bytes(b"one")
    p.write_bytes(b"three")  # size (and mtime) change: re-hashed
    assert cached_file_digest(p) == sha256_bytes(b"three")


def test_text_json_and_folder_digests(tmp_path):
    assert sha256_text("héllo") == hashlib.sha256("héllo".encode("utf-8")).hexdigest()
    assert sha256_json(["a", 1]) == hashlib.sha256(json.dumps(["a", 1]).encode()).hexdigest()
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "b.bin").write_bytes(b"x")
    files = sorted(tmp_path.iterdir())
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).hexdigest().encode() + b"\0")
    assert files_digest(tmp_path, files) == h.hexdigest()
