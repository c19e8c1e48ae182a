"""A persistent teacher-embedding store in front of any teacher.

Storage: one SQLite database file (Python's built-in ``sqlite3``).
Why SQLite: every write is an ACID transaction, so a crash or SIGKILL
mid-write leaves the last committed state readable (WAL journal); one file is
easy to copy and share between runs and data-parallel ranks (many readers,
one writer); keyed look-ups need no custom index code. Embeddings are stored
as raw little-endian float16 (default) or float32 blobs.

Keys:
* teacher  = SHA-256 of ``teacher.identity()`` (model, weights, preprocessing),
  so a changed teacher or preprocessing never reuses stale entries;
* content  = SHA-256 of the decoded image pixels (not the path);
* view     = ``"center"`` for the teacher's evaluation view, or ``"aug:<hash>"``
  of the augmentation parameters, which are stored with the row so a run can
  replay exactly the view the teacher embedded.
Text embeddings are keyed by (teacher, text).

The store counts what it asks the teacher (queries) and what it serves from
disk (hits); these numbers go into every run record.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vl2v.data.transforms import AugParams
from vl2v.teachers.base import Teacher
from vl2v.utils.hashing import sha256_text

SCHEMA_VERSION = 1
CENTER_VIEW = "center"


def view_id(params: AugParams | None) -> str:
    if params is None:
        return CENTER_VIEW
    blob = json.dumps(params.to_dict(), sort_keys=True, separators=(",", ":"))
    return "aug:" + sha256_text(blob)[:20]


# Bump when the way vl2v renders a view (vl2v.data.transforms) changes: cached
# embeddings of the old renderings then stop matching.
RENDER_VERSION = 1


def teacher_key(identity: str) -> str:
    return sha256_text(f"{identity}|render=v{RENDER_VERSION}")[:32]


@dataclass
class QueryStats:
    image_queries: int = 0  # images sent to the teacher
    text_queries: int = 0
    image_hits: int = 0  # images served from the store
    text_hits: int = 0
    seconds: float = 0.0  # wall time spent waiting for the teacher
    bytes_sent: int = 0  # request bytes sent to a remote teacher (0 for local teachers)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    def add(self, other: "QueryStats") -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)


class StoreError(RuntimeError):
    pass


class _Busy(Exception):
    """SQLite answered "database is locked" while the store was being opened (retried)."""


@dataclass
class TeacherStore:
    """Cache teacher embeddings on disk (``path``) or in memory (``path=None``)."""

    teacher: Teacher
    path: Path | None = None
    dtype: str = "float16"
    read_only: bool = False
    stats: QueryStats = field(default_factory=QueryStats)

    def _sync_bytes(self) -> None:
        sent = getattr(self.teacher, "bytes_sent", None)
        if isinstance(sent, (int, float)):
            self.stats.bytes_sent = int(sent) - self._bytes0

    def __post_init__(self) -> None:
        self._bytes0 = int(getattr(self.teacher, "bytes_sent", 0) or 0)
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"store dtype must be float16 or float32, got {self.dtype!r}")
        self._np_dtype = np.dtype("<f2" if self.dtype == "float16" else "<f4")
        self.identity = self.teacher.identity()
        self.tkey = teacher_key(self.identity)
        self.dim = self.teacher.embed_dim
        self._lock = threading.Lock()
        self._conn = self._connect()

    # ------------------------------------------------------------------ db
    def _connect(self) -> sqlite3.Connection:
        """Open (and on first use create) the database. Processes that open one new file at the same moment (the
        ranks of a data-parallel run, the jobs of a local sweep) can get "database is locked" at once from the
        journal-mode switch, which SQLite does not route through its busy timeout: retry that for up to a minute."""
        deadline = time.monotonic() + 60.0
        wait = 0.02
        while True:
            try:
                return self._connect_once()
            except _Busy:
                if time.monotonic() > deadline:
                    raise StoreError(f"teacher store {self.path} stayed locked by another process for 60 s; "
                                     "is another run writing to it? Wait for it, or pass a different --store") from None
                time.sleep(wait)
                wait = min(wait * 2, 0.5)

    def _connect_once(self) -> sqlite3.Connection:
        if self.path is None:
            conn = sqlite3.connect(":memory:", check_same_thread=False)
        else:
            self.path = Path(self.path)
            if self.read_only:
                if not self.path.exists():
                    raise StoreError(f"teacher store {self.path} does not exist")
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=60)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60)
        try:
            if self.path is not None and not self.read_only:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            if not self.read_only:
                with conn:
                    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                    conn.execute("CREATE TABLE IF NOT EXISTS teachers (tkey TEXT PRIMARY KEY, identity TEXT, dim INTEGER)")
                    conn.execute("CREATE TABLE IF NOT EXISTS images (tkey TEXT, content TEXT, view TEXT, params TEXT, "
                                 "dtype TEXT, emb BLOB, PRIMARY KEY (tkey, content, view)) WITHOUT ROWID")
                    conn.execute("CREATE TABLE IF NOT EXISTS texts (tkey TEXT, text TEXT, dtype TEXT, emb BLOB, "
                                 "PRIMARY KEY (tkey, text)) WITHOUT ROWID")
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                    row = conn.execute("SELECT identity, dim FROM teachers WHERE tkey=?", (self.tkey,)).fetchone()
                    if row is None:
                        conn.execute("INSERT INTO teachers VALUES (?, ?, ?)", (self.tkey, self.identity, self.dim))
            row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is not None and int(row[0]) != SCHEMA_VERSION:
                raise StoreError(f"teacher store {self.path} has schema {row[0]}, this vl2v reads {SCHEMA_VERSION}")
            row = conn.execute("SELECT identity, dim FROM teachers WHERE tkey=?", (self.tkey,)).fetchone()
            if row is not None and (row[0] != self.identity or int(row[1]) != self.dim):
                raise StoreError(f"teacher store {self.path}: key collision for teacher {self.identity!r}")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc)):
                raise _Busy() from exc
            raise StoreError(f"teacher store {self.path} is not a usable SQLite database ({exc}); "
                             f"move it away to start a fresh cache") from exc
        return conn

    def close(self) -> None:
        self._conn.close()

    def _decode(self, blob: bytes, dtype: str) -> np.ndarray:
        arr = np.frombuffer(blob, dtype=np.dtype("<f2" if dtype == "float16" else "<f4"))
        if arr.shape[0] != self.dim:
            raise StoreError(f"corrupt store entry: {arr.shape[0]} values, teacher dim {self.dim}")
        return arr.astype(np.float32)

    def _encode(self, v: torch.Tensor) -> bytes:
        return v.detach().cpu().numpy().astype(self._np_dtype).tobytes()

    # -------------------------------------------------------------- images
    def lookup_images(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        found: dict[tuple[str, str], np.ndarray] = {}
        with self._lock:
            for content, view in keys:
                row = self._conn.execute("SELECT dtype, emb FROM images WHERE tkey=? AND content=? AND view=?",
                                         (self.tkey, content, view)).fetchone()
                if row is not None:
                    found[(content, view)] = self._decode(row[1], row[0])
        return found

    def image_embeddings(
        self,
        keys: Sequence[tuple[str, AugParams | None]],
        render: Callable[[int], torch.Tensor],
        batch_size: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        """Embeddings for ``keys`` = [(content_hash, params or None)], querying only misses.

        ``render(i)`` returns the teacher input for ``keys[i]`` ([3,S,S] in [0,1]).
        Each batch of new embeddings is committed before the next query, so an
        interruption (crash, exhausted budget) keeps everything already paid for.
        """
        vids = [(c, view_id(p)) for c, p in keys]
        found = self.lookup_images(list(dict.fromkeys(vids)))
        out = np.zeros((len(keys), self.dim), dtype=np.float32)
        missing: dict[tuple[str, str], list[int]] = {}
        for i, k in enumerate(vids):
            if k in found:
                out[i] = found[k]
            else:
                missing.setdefault(k, []).append(i)
        self.stats.image_hits += len(keys) - len(missing)  # served without a query (stored or repeated)
        todo = list(missing.items())
        for b in range(0, len(todo), batch_size):
            chunk = todo[b:b + batch_size]
            if self.read_only:
                raise StoreError(f"read-only teacher store is missing {len(todo) - b} image embeddings")
            imgs = torch.stack([render(idxs[0]) for _, idxs in chunk])
            t0 = time.perf_counter()
            emb = self.teacher.embed_images(imgs)
            self.stats.seconds += time.perf_counter() - t0
            self._sync_bytes()
            self.stats.image_queries += len(chunk)
            rows = []
            for (k, idxs), e in zip(chunk, emb):
                params = keys[idxs[0]][1]
                rows.append((self.tkey, k[0], k[1], json.dumps(params.to_dict()) if params else None,
                             self.dtype, self._encode(e)))
                vec = np.frombuffer(self._encode(e), dtype=self._np_dtype).astype(np.float32)
                for i in idxs:
                    out[i] = vec  # return exactly what a later run will read back
            with self._lock, self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)", rows)
            if on_batch is not None:
                on_batch(len(chunk))
        return torch.from_numpy(out)

    def query_images(self, images: torch.Tensor) -> torch.Tensor:
        """Ask the teacher directly, without caching (online mode); counted as queries."""
        t0 = time.perf_counter()
        emb = self.teacher.embed_images(images)
        self.stats.seconds += time.perf_counter() - t0
        self._sync_bytes()
        self.stats.image_queries += int(images.shape[0])
        return emb

    def view_params(self, content: str, view: str) -> AugParams | None:
        row = self._conn.execute("SELECT params FROM images WHERE tkey=? AND content=? AND view=?",
                                 (self.tkey, content, view)).fetchone()
        if row is None or row[0] is None:
            return None
        return AugParams.from_dict(json.loads(row[0]))

    # --------------------------------------------------------------- texts
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        missing: list[int] = []
        with self._lock:
            for i, t in enumerate(texts):
                row = self._conn.execute("SELECT dtype, emb FROM texts WHERE tkey=? AND text=?", (self.tkey, t)).fetchone()
                if row is None:
                    missing.append(i)
                else:
                    out[i] = self._decode(row[1], row[0])
        self.stats.text_hits += len(texts) - len(missing)
        if missing:
            if self.read_only:
                raise StoreError(f"read-only teacher store is missing {len(missing)} text embeddings")
            uniq = list(dict.fromkeys(texts[i] for i in missing))
            t0 = time.perf_counter()
            emb = self.teacher.embed_texts(uniq)
            self.stats.seconds += time.perf_counter() - t0
            self._sync_bytes()
            self.stats.text_queries += len(uniq)
            rows = [(self.tkey, t, self.dtype, self._encode(e)) for t, e in zip(uniq, emb)]
            with self._lock, self._conn:
                self._conn.executemany("INSERT OR REPLACE INTO texts VALUES (?, ?, ?, ?)", rows)
            lut = {t: np.frombuffer(r[3], dtype=self._np_dtype).astype(np.float32) for t, r in zip(uniq, rows)}
            for i in missing:
                out[i] = lut[texts[i]]
        return torch.from_numpy(out)

    def known_images(self, keys: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """The ``(content, view id)`` keys the store already answers (nothing is decoded or counted)."""
        with self._lock:
            return {(c, v) for c, v in keys if self._conn.execute(
                "SELECT 1 FROM images WHERE tkey=? AND content=? AND view=?", (self.tkey, c, v)).fetchone()}

    def known_texts(self, texts: Sequence[str]) -> set[str]:
        """The texts the store already answers (nothing is decoded or counted)."""
        with self._lock:
            return {t for t in texts if self._conn.execute(
                "SELECT 1 FROM texts WHERE tkey=? AND text=?", (self.tkey, t)).fetchone()}

    def counts(self) -> dict[str, int]:
        n_img = self._conn.execute("SELECT COUNT(*) FROM images WHERE tkey=?", (self.tkey,)).fetchone()[0]
        n_txt = self._conn.execute("SELECT COUNT(*) FROM texts WHERE tkey=?", (self.tkey,)).fetchone()[0]
        return {"images": int(n_img), "texts": int(n_txt)}


def default_store_path() -> Path:
    from vl2v.utils.io import vl2v_home

    env = os.environ.get("VL2V_TEACHER_STORE")
    return Path(env).expanduser() if env else vl2v_home() / "teacher_store.sqlite"
