"""Per-key query metering and idempotent answers, in one SQLite file under the data directory.

Every billed request is one transaction that (1) appends a ledger row, (2) adds
to the key's totals and (3) stores the response under the request's
idempotency key, if it has one. So a request is billed if and only if its
answer is stored, and a crash can never bill an answer that a retry cannot
fetch. Replays of a stored answer are counted (``replays``) but not billed.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class StoredAnswer:
    route: str
    body_sha: str
    response: bytes


class UsageLedger:
    def __init__(self, path: str | Path, ttl_s: float = 24 * 3600.0) -> None:
        self.path = Path(path)
        self.ttl_s = float(ttl_s)
        self._lock = threading.Lock()
        self._commits = 0
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
             request_id: str | None = None, body_sha: str = "", response: bytes = b"") -> None:
        """Bill one answered request and store its answer (if it has an id), atomically."""
        now = time.time()
        with self._lock, self._tx():
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
            self._commits += 1
        if self._commits % 1000 == 0:
            self.prune()

    def count_replay(self, key: str) -> None:
        now = time.time()
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
            self._conn.execute("DELETE FROM answers WHERE at < ?", (time.time() - self.ttl_s,))
