"""API keys of the embedding service, and each key's quotas and rate limit.

The keys file has one key per line, ``NAME SECRET [LIMIT ...]``, ``#`` starts a comment::

    # name     secret                                                                   limits (optional)
    alice      sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8  images=1000/day rate=5/s
    bob        sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  images=50000/prepaid
    ci-runner  vl2v_0Hq6...   (a plain token: accepted, but prefer the sha256 form)

``sha256:HEX`` stores only the SHA-256 of the token, so the file does not hold
usable secrets. Metering is per NAME; the token itself is never written
anywhere by the service. :func:`add_key` makes a fresh random token and
appends its hash (the file is created with mode 0600); :func:`set_limits`
changes a key's limits in place.

Limits (all optional; a key without them is unlimited):

``images=N/PERIOD``, ``texts=N/PERIOD``
    at most N image (text) queries per fixed window of one ``minute``, ``hour``
    or ``day`` (UTC, aligned to the Unix epoch: a day window starts at 00:00 UTC);
    ``N/prepaid``: N queries in all (a balance that only goes down; raise N to top up).
``rate=R/s`` or ``rate=R/min``, ``burst=B``
    a token bucket of B requests (default: R rounded up) refilled at R per second
    (minute): at most B embedding requests at once, R per second (minute) on average.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from vl2v.errors import UserError

NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_TOKEN_CHARS = 16
TOKEN_PREFIX = "vl2v_"
#: quota windows, in seconds; "prepaid" has none (a balance)
PERIODS = {"minute": 60, "hour": 3600, "day": 86400}
PREPAID = "prepaid"
#: rate-limit units, in seconds
RATE_UNITS = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0}
LIMIT_FIELDS = ("images", "texts", "rate", "burst")
_UNLIMITED = ("none", "unlimited", "off")


class KeysFileError(UserError, ValueError):
    """The keys file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True)
class Quota:
    """At most ``limit`` queries of one kind per ``period`` window, or in all (``prepaid``)."""

    limit: int
    period: str  # "minute" | "hour" | "day" | "prepaid"

    @property
    def seconds(self) -> int | None:
        """The window's length; None for a prepaid balance."""
        return PERIODS.get(self.period)

    def __str__(self) -> str:
        return f"{self.limit}/{self.period}"


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``burst`` requests, refilled at ``rate`` per ``unit`` ("s" or "min")."""

    rate: float
    unit: str
    burst: int

    @property
    def per_second(self) -> float:
        return self.rate / RATE_UNITS[self.unit]

    def __str__(self) -> str:
        return f"{self.rate:g}/{self.unit}"


@dataclass(frozen=True)
class KeyLimits:
    images: Quota | None = None
    texts: Quota | None = None
    rate: RateLimit | None = None

    def quota(self, kind: str) -> Quota | None:
        return self.images if kind == "image" else self.texts

    def fields(self) -> list[str]:
        """The limits as keys-file fields (``images=1000/day`` ...), in a fixed order."""
        out = [f"images={self.images}"] if self.images else []
        out += [f"texts={self.texts}"] if self.texts else []
        if self.rate:
            out += [f"rate={self.rate}", f"burst={self.rate.burst}"]
        return out

    def as_dict(self) -> dict[str, object]:
        rate = self.rate
        return {"images": str(self.images) if self.images else None, "texts": str(self.texts) if self.texts else None,
                "rate": str(rate) if rate else None, "burst": rate.burst if rate else None}


def _quota(field_name: str, value: str, where: str, current: Quota | None) -> Quota | None:
    if value.lower() in _UNLIMITED:
        return None
    m = re.fullmatch(r"(\+?)(\d+)(?:/([a-z]+))?", value)
    period = (m.group(3) or (current.period if current else "")) if m else ""
    if not m or period not in (*PERIODS, PREPAID):
        raise KeysFileError(f"{where}: {field_name}={value!r}: expected N/minute, N/hour, N/day, N/prepaid or none")
    n = int(m.group(2))
    if m.group(1):  # "+N": top up a prepaid balance
        if current is None or current.period != PREPAID or period != PREPAID:
            raise KeysFileError(f"{where}: {field_name}={value!r}: '+N' adds to a prepaid limit, and the key has none")
        n += current.limit
    return Quota(n, period)


def _rate(value: str, where: str) -> tuple[float, str] | None:
    if value.lower() in _UNLIMITED:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)/([a-z]+)", value)
    if not m or m.group(2) not in RATE_UNITS or float(m.group(1)) <= 0:
        raise KeysFileError(f"{where}: rate={value!r}: expected R/s or R/min with R > 0, or none")
    unit = "s" if RATE_UNITS[m.group(2)] == 1.0 else "min"
    return float(m.group(1)), unit


def parse_limits(items: list[str], where: str = "limits", base: KeyLimits | None = None) -> KeyLimits:
    """``["images=1000/day", "rate=5/s", ...]`` -> :class:`KeyLimits`, changing ``base`` (default: none)."""
    base = base or KeyLimits()
    values: dict[str, str] = {}
    for item in items:
        k, eq, v = item.partition("=")
        if not eq or k not in LIMIT_FIELDS or not v:
            raise KeysFileError(f"{where}: bad limit {item!r}: expected images=N/PERIOD, texts=N/PERIOD, "
                                f"rate=R/s|R/min or burst=B")
        if k in values:
            raise KeysFileError(f"{where}: {k} given twice")
        values[k] = v.strip().lower()
    images = _quota("images", values["images"], where, base.images) if "images" in values else base.images
    texts = _quota("texts", values["texts"], where, base.texts) if "texts" in values else base.texts
    rate = base.rate
    if "rate" in values:
        parsed = _rate(values["rate"], where)
        rate = None if parsed is None else RateLimit(parsed[0], parsed[1], max(1, math.ceil(parsed[0])))
    if "burst" in values:
        if not values["burst"].isdigit() or int(values["burst"]) < 1:
            raise KeysFileError(f"{where}: burst={values['burst']!r}: expected an integer >= 1")
        if rate is None:
            raise KeysFileError(f"{where}: burst without rate: give rate=R/s or rate=R/min too")
        rate = replace(rate, burst=int(values["burst"]))
    return KeyLimits(images, texts, rate)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    name: str
    digest: str
    limits: KeyLimits
    lineno: int


def parse_key_entries(text: str, source: str = "keys file") -> list[KeyEntry]:
    """Every key of the keys file's text, with its limits, in file order."""
    out: list[KeyEntry] = []
    digests: dict[str, str] = {}
    names: set[str] = set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) < 2:
            raise KeysFileError(f"{source}:{lineno}: expected 'NAME SECRET [LIMIT ...]', got {len(parts)} field")
        name, secret = parts[:2]
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
        if digest in digests:
            raise KeysFileError(f"{source}:{lineno}: key {name!r} has the same secret as {digests[digest]!r}")
        limits = parse_limits(parts[2:], f"{source}:{lineno}")
        digests[digest] = name
        names.add(name)
        out.append(KeyEntry(name, digest, limits, lineno))
    return out


def parse_keys(text: str, source: str = "keys file") -> dict[str, str]:
    """``{sha256(token): name}`` from the keys file's text."""
    return {e.digest: e.name for e in parse_key_entries(text, source)}


def add_key(path: str | os.PathLike[str], name: str, limits: KeyLimits | None = None) -> str:
    """Append a new key ``name`` (with ``limits``) to the keys file (created 0600 if missing); return its token.

    The token is printed once by ``vl2v serve --new-key``; only its hash is stored.
    """
    path = Path(path)
    if not NAME_RE.match(name):
        raise KeysFileError(f"bad key name {name!r}: letters, digits, _.@- only, at most 64 characters")
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    entries = parse_key_entries(existing, str(path))  # refuse to append to a broken file
    if any(e.name == name for e in entries):
        raise KeysFileError(f"{path}: a key named {name!r} already exists")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # usually the service's data dir
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        if existing and not existing.endswith("\n"):
            fh.write("\n")
        fh.write(" ".join([name, f"sha256:{token_hash(token)}", *(limits or KeyLimits()).fields()]) + "\n")
    return token


def set_limits(path: str | os.PathLike[str], name: str, items: list[str]) -> KeyLimits:
    """Change key ``name``'s limits in the keys file (``items`` as for :func:`parse_limits`; the others stay).

    The file is rewritten whole and renamed into place (mode 0600); comments and other lines are kept. A running
    service picks the change up within a second.
    """
    path = Path(path)
    if not path.is_file():
        raise KeysFileError(f"keys file {path} not found")
    text = path.read_text(encoding="utf-8")
    entry = next((e for e in parse_key_entries(text, str(path)) if e.name == name), None)
    if entry is None:
        raise KeysFileError(f"{path}: no key named {name!r}")
    limits = parse_limits(items, f"--limits for {name!r}", base=entry.limits)
    lines = text.splitlines()
    raw = lines[entry.lineno - 1]
    comment = "  #" + raw.split("#", 1)[1] if "#" in raw else ""
    secret = raw.split("#", 1)[0].split()[1]
    lines[entry.lineno - 1] = " ".join([name, secret, *limits.fields()]) + comment
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return limits


@dataclass
class KeyRing:
    """The keys of a running service; re-reads the file when it changes (at most once a second)."""

    path: Path
    _keys: dict[str, str] = field(default_factory=dict)
    _limits: dict[str, KeyLimits] = field(default_factory=dict)
    _stamp: tuple[int, int, int] | None = None
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
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if force or stamp != self._stamp:
            try:
                entries = parse_key_entries(self.path.read_text(encoding="utf-8"), str(self.path))
            except KeysFileError:
                if force:
                    raise
                return  # a half-written edit: keep serving with the last good keys
            self._keys = {e.digest: e.name for e in entries}
            self._limits = {e.name: e.limits for e in entries}
            self._stamp = stamp

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

    def refresh(self) -> None:
        """Re-read the keys file now if it changed (otherwise :meth:`authenticate` does, at most once a second)."""
        with self._lock:
            self._checked = time.monotonic()
            self._reload()

    def limits(self, name: str) -> KeyLimits:
        """Key ``name``'s quotas and rate limit (none for a key that is gone)."""
        return self._limits.get(name, KeyLimits())

    def names(self) -> list[str]:
        return sorted(self._keys.values())
