"""API keys of the embedding service.

The keys file has one key per line, ``NAME SECRET``, ``#`` starts a comment::

    # name     secret
    alice      sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
    ci-runner  vl2v_0Hq6...   (a plain token: accepted, but prefer the sha256 form)

``sha256:HEX`` stores only the SHA-256 of the token, so the file does not hold
usable secrets. Metering is per NAME; the token itself is never written
anywhere by the service. :func:`add_key` makes a fresh random token and
appends its hash (the file is created with mode 0600).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from vl2v.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_TOKEN_CHARS = 16
TOKEN_PREFIX = "vl2v_"


class KeysFileError(UserError, ValueError):
    """The keys file is missing or malformed; the message names the file and line."""


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_keys(text: str, source: str = "keys file") -> dict[str, str]:
    """``{sha256(token): name}`` from the keys file's text."""
    out: dict[str, str] = {}
    names: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise KeysFileError(f"{source}:{lineno}: expected 'NAME SECRET', got {len(parts)} fields")
        name, secret = parts
        if not NAME_RE.match(name):
            raise KeysFileError(f"{source}:{lineno}: bad key name {name!r} (letters, digits, _.@- only, at most 64)")
        if name in names:
            raise KeysFileError(f"{source}:{lineno}: key name {name!r} appears twice")
        if secret.startswith("sha256:"):
            digest = secret[7:].lower()
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise KeysFileError(f"{source}:{lineno}: 'sha256:' must be followed by 64 hex digits")
        else:
            if len(secret) < MIN_TOKEN_CHARS:
                raise KeysFileError(f"{source}:{lineno}: token for {name!r} is shorter than {MIN_TOKEN_CHARS} characters")
            digest = token_hash(secret)
        if digest in out:
            raise KeysFileError(f"{source}:{lineno}: key {name!r} has the same secret as {out[digest]!r}")
        out[digest] = name
        names.add(name)
    return out


def add_key(path: str | os.PathLike[str], name: str) -> str:
    """Append a new key ``name`` to the keys file (created 0600 if missing); return its token.

    The token is printed once by ``vl2v serve --new-key``; only its hash is stored.
    """
    path = Path(path)
    if not NAME_RE.match(name):
        raise KeysFileError(f"bad key name {name!r}: letters, digits, _.@- only, at most 64 characters")
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    parse_keys(existing, str(path))  # refuse to append to a broken file
    if any(line.split("#", 1)[0].split()[:1] == [name] for line in existing.splitlines()):
        raise KeysFileError(f"{path}: a key named {name!r} already exists")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # usually the service's data dir
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        if existing and not existing.endswith("\n"):
            fh.write("\n")
        fh.write(f"{name} sha256:{token_hash(token)}\n")
    return token


@dataclass
class KeyRing:
    """The keys of a running service; re-reads the file when it changes (at most once a second)."""

    path: Path
    _keys: dict[str, str] = field(default_factory=dict)
    _stamp: tuple[float, int] | None = None
    _checked: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise KeysFileError(f"keys file {self.path} not found: create a key with "
                                f"`vl2v serve --keys {self.path} --new-key NAME`")
        self._reload(force=True)
        if not self._keys:
            raise KeysFileError(f"keys file {self.path} has no keys: add one with `vl2v serve --new-key NAME`")

    def _reload(self, force: bool = False) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return  # keep the last good keys if the file vanishes mid-edit
        stamp = (st.st_mtime, st.st_size)
        if force or stamp != self._stamp:
            try:
                keys = parse_keys(self.path.read_text(encoding="utf-8"), str(self.path))
            except KeysFileError:
                if force:
                    raise
                return  # a half-written edit: keep serving with the last good keys
            self._keys, self._stamp = keys, stamp

    def authenticate(self, token: str | None) -> str | None:
        """The key's name, or None for a missing or unknown token."""
        if not token:
            return None
        now = time.monotonic()
        with self._lock:
            if now - self._checked > 1.0:
                self._checked = now
                self._reload()
            keys = self._keys
        # A dict look-up on the token's SHA-256: timing reveals nothing usable about stored secrets.
        return keys.get(token_hash(token))

    def names(self) -> list[str]:
        return sorted(self._keys.values())
