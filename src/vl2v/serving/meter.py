"""Per-key query metering, quotas and idempotent answers, in one SQLite file under the data directory.

Every billed request is one transaction that (1) appends a ledger row, (2) adds
to the key's totals and (3) stores the response under the request's
idempotency key, if it has one. So a request is billed if and only if its
answer is stored, and a crash can never bill an answer that a retry cannot
fetch. Replays of a stored answer are counted (``replays``) but not billed.

Quotas (:meth:`UsageLedger.admit`): before a request is computed, its image and
text queries are *reserved* against the key's quotas, under the same lock that
bills; :meth:`UsageLedger.bill` turns the reservation into a ledger row and
:meth:`UsageLedger.release` drops it if the request failed. So concurrent
requests can never pass a quota between them, a batch is admitted or refused
whole, and a failed request costs nothing. Usage per window comes from the
ledger (fixed windows aligned to the Unix epoch, so a day is a UTC day; a
request counts in the window it was admitted in) and is then kept in memory;
a prepaid balance is counted against the key's all-time totals.
:class:`RateLimiter` is the per-key token bucket (in memory only).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from vl2v.serving.keys import PERIODS, PREPAID, KeyLimits, Quota, RateLimit

SCHEMA_VERSION = 1
USAGE_DB = "usage.sqlite"  # in the data directory


@dataclass(frozen=True)
class StoredAnswer:
    route: str
    body_sha: str
    response: bytes


@dataclass(frozen=True)
class Admission:
    """Queries reserved for one request being computed (see :meth:`UsageLedger.admit`)."""

    id: int
    key: str
    images: int
    texts: int
    at: float


class QuotaRefused(Exception):
    """A request that does not fit a quota or the rate limit; :meth:`body` is the 429 answer's detail.

    ``reason``: ``quota_exceeded`` (a window's quota; ``retry_after``: seconds until the window ends),
    ``prepaid_exhausted`` (no ``retry_after``), ``rate_limited`` (seconds until the bucket has a request)
    or ``batch_over_quota`` (the batch alone is larger than a window's quota: it never fits).
    """

    def __init__(self, reason: str, kind: str, limit: float, used: int | None, requested: int, period: str,
                 retry_after: float | None = None, resets_at: float | None = None, burst: int | None = None) -> None:
        self.reason, self.kind, self.limit, self.used, self.requested = reason, kind, limit, used, requested
        self.period, self.retry_after, self.resets_at, self.burst = period, retry_after, resets_at, burst
        super().__init__(self.message())

    def message(self) -> str:
        if self.reason == "rate_limited":
            return (f"rate limit of {self.limit:g} requests per {self.period} (burst {self.burst}) reached; "
                    f"retry in {self.retry_after or 0:.3g} s")
        what = f"{self.kind} queries"
        if self.reason == "prepaid_exhausted":
            return (f"prepaid {what} exhausted: {self.used} of {self.limit} used ({max(0, self.limit - (self.used or 0))} "
                    f"left), this request needs {self.requested}; ask the service's operator to top up")
        if self.reason == "batch_over_quota":
            return (f"this request has {self.requested} {what}, more than the key's quota of {self.limit} per "
                    f"{self.period}: send smaller batches")
        return (f"quota of {self.limit} {what} per {self.period} reached: {self.used} used, this request needs "
                f"{self.requested}; the window resets in {math.ceil(self.retry_after or 0)} s")

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "kind": self.kind, "limit": self.limit}
        if self.used is not None:
            out["used"] = self.used
        out.update(requested=self.requested, period=self.period)
        if self.burst is not None:
            out["burst"] = self.burst
        if self.retry_after is not None:
            out["retry_after"] = round(self.retry_after, 3)
        if self.resets_at is not None:
            out["resets_at"] = iso(self.resets_at)
        return out


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat()


def window_start(period_s: int, now: float) -> float:
    """Start of the fixed window of ``period_s`` seconds holding ``now`` (aligned to the Unix epoch)."""
    return math.floor(now / period_s) * period_s


class RateLimiter:
    """Per-key token buckets (in memory): :meth:`take` one request, or say how long until one is allowed."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[RateLimit, float, float]] = {}  # key -> (config, tokens, at)

    def take(self, key: str, rate: RateLimit) -> float | None:
        """None if a request is allowed now (and taken); else the seconds until one is."""
        now = self.clock()
        with self._lock:
            config, tokens, at = self._buckets.get(key, (rate, float(rate.burst), now))
            if config != rate:  # the operator changed the limit: start a full bucket
                tokens, at = float(rate.burst), now
            tokens = min(float(rate.burst), tokens + max(0.0, now - at) * rate.per_second)
            if tokens >= 1.0:
                self._buckets[key] = (rate, tokens - 1.0, now)
                return None
            self._buckets[key] = (rate, tokens, now)
            return (1.0 - tokens) / rate.per_second


class UsageLedger:
    def __init__(self, path: str | Path, ttl_s: float = 24 * 3600.0, clock: Callable[[], float] = time.time,
                 readonly: bool = False) -> None:
        self.path = Path(path)
        self.ttl_s = float(ttl_s)
        self.clock = clock
        self._lock = threading.Lock()
        self._commits = 0
        self._ids = itertools.count(1)
        self._reserved: dict[str, dict[int, Admission]] = {}  # key -> requests being computed
        self._window: dict[str, dict[int, list[float]]] = {}  # key -> period_s (0: all time) -> [start, images, texts]
        if readonly:  # `vl2v serve --usage`: look, change nothing
            self._conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=30,
                                         isolation_level=None)
            return
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30,
                                     isolation_level=None)  # explicit BEGIN/COMMIT below
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a committed bill survives a process crash
        with self._tx():
            self._conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self._conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS usage (key TEXT PRIMARY KEY, image_queries INTEGER NOT NULL DEFAULT 0, "
                "text_queries INTEGER NOT NULL DEFAULT 0, requests INTEGER NOT NULL DEFAULT 0, "
                "replays INTEGER NOT NULL DEFAULT 0, bytes_received INTEGER NOT NULL DEFAULT 0, "
                "first_at REAL, last_at REAL)")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, "
                "route TEXT NOT NULL, request_id TEXT, images INTEGER NOT NULL, texts INTEGER NOT NULL, "
                "bytes INTEGER NOT NULL, at REAL NOT NULL)")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS answers (key TEXT NOT NULL, request_id TEXT NOT NULL, route TEXT NOT NULL, "
                "body_sha TEXT NOT NULL, response BLOB NOT NULL, at REAL NOT NULL, "
                "PRIMARY KEY (key, request_id)) WITHOUT ROWID")
            self._conn.execute("CREATE INDEX IF NOT EXISTS ledger_key_at ON ledger (key, at)")  # usage per window
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path}: usage database schema {row[0]}, this vl2v reads {SCHEMA_VERSION}")
        self.prune()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def answer(self, key: str, request_id: str) -> StoredAnswer | None:
        with self._lock:
            row = self._conn.execute("SELECT route, body_sha, response FROM answers WHERE key=? AND request_id=?",
                                     (key, request_id)).fetchone()
        return None if row is None else StoredAnswer(row[0], row[1], bytes(row[2]))

    def bill(self, key: str, route: str, images: int, texts: int, nbytes: int,
             request_id: str | None = None, body_sha: str = "", response: bytes = b"",
             admission: Admission | None = None) -> None:
        """Bill one answered request and store its answer (if it has an id), atomically; with ``admission``
        (from :meth:`admit`), the reservation becomes the bill, dated when the request was admitted."""
        with self._lock:
            now = self.clock() if admission is None else admission.at
            with self._tx():
                self._conn.execute("INSERT INTO ledger (key, route, request_id, images, texts, bytes, at) "
                                   "VALUES (?, ?, ?, ?, ?, ?, ?)", (key, route, request_id, images, texts, nbytes, now))
                self._conn.execute(
                    "INSERT INTO usage (key, image_queries, text_queries, requests, bytes_received, first_at, last_at) "
                    "VALUES (?, ?, ?, 1, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                    "image_queries = image_queries + excluded.image_queries, "
                    "text_queries = text_queries + excluded.text_queries, requests = requests + 1, "
                    "bytes_received = bytes_received + excluded.bytes_received, last_at = excluded.last_at",
                    (key, images, texts, nbytes, now, now))
                if request_id is not None:
                    self._conn.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                                       (key, request_id, route, body_sha, response, now))
            if admission is not None:
                self._reserved.get(key, {}).pop(admission.id, None)
            for period, entry in self._window.get(key, {}).items():  # keep the in-memory window counts exact
                if period == 0 or entry[0] <= now < entry[0] + period:
                    entry[1] += images
                    entry[2] += texts
            self._commits += 1
            commits = self._commits
        if commits % 1000 == 0:
            self.prune()

    # ------------------------------------------------------------------ quotas
    def admit(self, key: str, images: int, texts: int, limits: KeyLimits) -> Admission:
        """Reserve a request's queries against the key's quotas, or raise :class:`QuotaRefused` (nothing reserved).

        Follow with :meth:`bill` (the request was answered) or :meth:`release` (it failed).
        """
        now = self.clock()
        with self._lock:
            for kind, n in (("image", images), ("text", texts)):
                quota = limits.quota(kind)
                if quota is not None and n > 0:
                    self._check(key, kind, n, quota, now)
            admission = Admission(next(self._ids), key, images, texts, now)
            self._reserved.setdefault(key, {})[admission.id] = admission
            return admission

    def release(self, admission: Admission) -> None:
        """Drop the reservation of a request that was not answered (safe to call after :meth:`bill` too)."""
        with self._lock:
            self._reserved.get(admission.key, {}).pop(admission.id, None)

    def _check(self, key: str, kind: str, n: int, quota: Quota, now: float) -> None:
        period = quota.seconds or 0
        entry = self._used(key, period, now)
        i = 1 if kind == "image" else 2
        start = entry[0]
        pending = sum((a.images if kind == "image" else a.texts) for a in self._reserved.get(key, {}).values()
                      if period == 0 or start <= a.at < start + period)
        used = int(entry[i]) + pending
        if quota.period == PREPAID:
            if used + n > quota.limit:
                raise QuotaRefused("prepaid_exhausted", kind, quota.limit, used, n, PREPAID)
            return
        if n > quota.limit:
            raise QuotaRefused("batch_over_quota", kind, quota.limit, used, n, quota.period)
        if used + n > quota.limit:
            end = start + period
            raise QuotaRefused("quota_exceeded", kind, quota.limit, used, n, quota.period, end - now, end)

    def _used(self, key: str, period: int, now: float) -> list[float]:
        """``[window start, images, texts]`` billed to ``key`` in the window of ``period`` s holding ``now``
        (``period`` 0: all time); from the database once per window, then kept up to date by :meth:`bill`."""
        start = 0.0 if period == 0 else window_start(period, now)
        entry = self._window.setdefault(key, {}).get(period)
        if entry is None or entry[0] != start:
            if period == 0:
                row = self._conn.execute("SELECT image_queries, text_queries FROM usage WHERE key=?",
                                         (key,)).fetchone() or (0, 0)
            else:
                row = self._conn.execute("SELECT COALESCE(SUM(images), 0), COALESCE(SUM(texts), 0) FROM ledger "
                                         "WHERE key=? AND at >= ? AND at < ?", (key, start, start + period)).fetchone()
            entry = self._window[key][period] = [start, int(row[0]), int(row[1])]
        return entry

    def report(self, key: str, limits: KeyLimits) -> list[dict[str, Any]]:
        """Usage of ``key`` per period: one row per window its quotas use (current window), then ``total``
        (all time, where a prepaid quota lives): queries billed, quota and remaining, per kind."""
        now = self.clock()
        quotas = {"image": limits.images, "text": limits.texts}
        periods = sorted({q.seconds for q in quotas.values() if q is not None and q.seconds}) + [0]
        rows = []
        with self._lock:
            for period in periods:
                start, images, texts = self._used(key, period, now)
                name = next((k for k, v in PERIODS.items() if v == period), "total")
                row: dict[str, Any] = {"period": name, "window_start": iso(start) if period else None,
                                       "resets_at": iso(start + period) if period else None,
                                       "image_queries": int(images), "text_queries": int(texts)}
                for kind, used in (("image", images), ("text", texts)):
                    q = quotas[kind]
                    mine = q is not None and (q.seconds or 0) == period
                    row[f"{kind}_quota"] = q.limit if mine else None
                    row[f"{kind}_remaining"] = max(0, q.limit - int(used)) if mine else None
                rows.append(row)
        return rows

    def summary(self, key: str, limits: KeyLimits) -> dict[str, Any]:
        """One key's usage (``GET /v1/usage``, ``vl2v serve --usage``): totals, limits, and :meth:`report`."""
        u = self.usage(key)
        return {"key": key, "image_queries": u["image_queries"], "text_queries": u["text_queries"],
                "requests": u["requests"], "replays": u["replays"], "bytes_received": u["bytes_received"],
                "first_request_at": iso(u["first_at"]), "last_request_at": iso(u["last_at"]),
                "limits": limits.as_dict(), "periods": self.report(key, limits)}

    def keys(self) -> list[str]:
        """Every key that has been billed or replayed, by name."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT key FROM usage ORDER BY key")]

    def count_replay(self, key: str) -> None:
        now = self.clock()
        with self._lock, self._tx():
            self._conn.execute("INSERT INTO usage (key, replays, first_at, last_at) VALUES (?, 1, ?, ?) "
                               "ON CONFLICT(key) DO UPDATE SET replays = replays + 1, last_at = excluded.last_at",
                               (key, now, now))

    def usage(self, key: str) -> dict[str, float | int | None]:
        with self._lock:
            row = self._conn.execute("SELECT image_queries, text_queries, requests, replays, bytes_received, "
                                     "first_at, last_at FROM usage WHERE key=?", (key,)).fetchone()
        names = ("image_queries", "text_queries", "requests", "replays", "bytes_received", "first_at", "last_at")
        if row is None:
            return dict(zip(names, (0, 0, 0, 0, 0, None, None)))
        return dict(zip(names, row))

    def totals(self) -> dict[str, int]:
        """Sums over every key, from the totals and (independently) from the ledger rows."""
        with self._lock:
            u = self._conn.execute("SELECT COALESCE(SUM(image_queries),0), COALESCE(SUM(text_queries),0), "
                                   "COALESCE(SUM(requests),0), COALESCE(SUM(replays),0) FROM usage").fetchone()
            l = self._conn.execute("SELECT COALESCE(SUM(images),0), COALESCE(SUM(texts),0), COUNT(*) FROM ledger").fetchone()
        return {"image_queries": u[0], "text_queries": u[1], "requests": u[2], "replays": u[3],
                "ledger_images": l[0], "ledger_texts": l[1], "ledger_requests": l[2]}

    def prune(self) -> None:
        """Forget stored answers older than the idempotency window (bills and ledger rows stay)."""
        with self._lock, self._tx():
            self._conn.execute("DELETE FROM answers WHERE at < ?", (self.clock() - self.ttl_s,))
