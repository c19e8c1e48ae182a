"""Generic download and unpack helpers for the dataset downloaders.

The pieces, each small and replaceable:

- :data:`Fetch` ``(url, dest) -> None``: write the bytes at ``url`` to ``dest``.
  :func:`default_fetch` uses ``gdown`` for Google Drive links and plain HTTP
  (resumable, with a progress bar) otherwise. Downloaders take a ``fetch=``
  argument so tests (or a mirror) can point them at local files.
- :func:`fetch_source`: fetch one :class:`Source` into a cache folder unless it
  is already there, then check its size/SHA-256 where known.
- :func:`extract_archive` / :func:`iter_tar_files`: unpack zip and tar(.gz)
  archives, refusing absolute paths, ``..`` and links.
- :func:`dataset_lock`, :func:`fresh_staging`, :func:`finalize`: build a dataset
  in ``ROOT/.NAME.incomplete`` and move it to ``ROOT/NAME`` in one rename, with a
  completion marker written first, so an interrupted download never leaves a
  complete-looking dataset folder.

Nothing here imports torch or PIL.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterator

from vl2v.errors import UserError
from vl2v.utils.hashing import file_digest

Fetch = Callable[[str, Path], None]

MARKER_NAME = ".vl2v-download.json"
DOWNLOADS_DIRNAME = ".downloads"


class DownloadError(UserError, RuntimeError):
    """A download or its post-processing failed; the message says what, where and what to do."""

    exit_code = 1
    prefix = "download failed"


@dataclass(frozen=True)
class Source:
    """One file to download: where from, what to call it locally, how to check it."""

    url: str
    filename: str
    sha256: str | None = None
    size: int | None = None  # bytes, when known


# --------------------------------------------------------------------------- fetching
def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def gdrive_id(url: str) -> str | None:
    """The file id of a ``drive.google.com`` link, or ``None`` for any other URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("drive.google.com", "docs.google.com"):
        return None
    ids = urllib.parse.parse_qs(parsed.query).get("id")
    if ids:
        return ids[0]
    parts = [p for p in parsed.path.split("/") if p]
    if "d" in parts and parts.index("d") + 1 < len(parts):  # /file/d/<id>/view
        return parts[parts.index("d") + 1]
    return None


def _progress_bar(total: int | None, initial: int, desc: str, enabled: bool):
    from vl2v.utils.progress import bar

    return bar(total, desc=desc, unit="B", disable=not enabled, initial=initial, unit_scale=True, unit_divisor=1024)


def http_fetch(url: str, dest: Path, *, progress: bool = True, timeout: float = 60.0,
               retries: int = 3, chunk: int = 1 << 20) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial file.

    The bytes go to ``<dest>.part`` (kept across failures; a later call resumes it
    with an HTTP ``Range`` request) and are renamed onto ``dest`` only when the
    transfer is complete, so ``dest`` existing means the download finished.
    """
    import http.client
    import urllib.error
    import urllib.request

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: BaseException | None = None
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={"User-Agent": "vl2v-dataset-downloader"})
        if have:
            req.add_header("Range", f"bytes={have}-")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status = getattr(resp, "status", None)
                if have and status != 206:  # the server ignored the range: start over
                    have = 0
                length = resp.headers.get("Content-Length")
                total = int(length) + have if length and length.isdigit() else None
                with open(part, "ab" if have else "wb") as fh, \
                        _progress_bar(total, have, dest.name, progress) as bar:
                    while True:
                        block = resp.read(chunk)
                        if not block:
                            break
                        fh.write(block)
                        bar.update(len(block))
                    fh.flush()
                    os.fsync(fh.fileno())
            got = part.stat().st_size
            if total is not None and got != total:
                raise http.client.IncompleteRead(b"", total - got)
            os.replace(part, dest)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # range past the end: the .part is unusable
                part.unlink(missing_ok=True)
                last = exc
                continue
            if exc.code in (401, 403, 404, 410):
                raise DownloadError(
                    f"download of {url} failed: HTTP {exc.code} {exc.reason}. The file may have moved; "
                    "check the dataset's page (see docs/datasets.md) and report it."
                ) from None
            last = exc
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as exc:
            last = exc
        if attempt < retries:
            time.sleep(min(2 ** attempt, 30))
    kept = f" The partial file {part} is kept: run the command again to resume." if part.exists() else ""
    raise DownloadError(f"download of {url} to {dest} failed after {retries + 1} tries: {last}.{kept}")


def gdrive_fetch(url: str, dest: Path, *, progress: bool = True) -> None:
    """Download a Google Drive file with ``gdown`` (which resumes and renames atomically)."""
    file_id = gdrive_id(url)
    if file_id is None:
        raise DownloadError(f"{url} is not a Google Drive link")
    try:
        import gdown
    except ImportError:
        raise DownloadError(
            f"downloading {dest.name} from Google Drive needs the 'gdown' package: pip install gdown"
        ) from None
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    hint = (f"If the network is fine, Google Drive may be refusing the file for a while (it does after many "
            f"downloads): wait and retry, or open {url} in a browser, save the file as {dest} and run the "
            "command again.")
    try:
        out = gdown.download(id=file_id, output=str(dest), quiet=not progress, resume=True)
    except Exception as exc:  # gdown raises several types (FileURLRetrievalError, requests errors, ...)
        raise DownloadError(f"Google Drive download of {url} failed: {exc}\n{hint}") from None
    if out is None or not dest.is_file():
        raise DownloadError(f"Google Drive download of {url} did not produce {dest}.\n{hint}")


def default_fetch(url: str, dest: Path) -> None:
    """Fetch ``url`` to ``dest``: Google Drive links with gdown, anything else over HTTP."""
    if gdrive_id(url) is not None:
        gdrive_fetch(url, dest)
    else:
        http_fetch(url, dest)


def fetch_source(src: Source, cache_dir: Path, fetch: Fetch) -> Path:
    """Return ``cache_dir/src.filename``, fetching it first unless it is already there.

    A file whose size or SHA-256 does not match is renamed to ``*.corrupt`` and
    reported, so the next run downloads it afresh.
    """
    dest = Path(cache_dir) / src.filename
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        fetch(src.url, dest)
        if not dest.is_file():
            raise DownloadError(f"fetching {src.url} did not produce {dest}")
    problem = None
    if src.size is not None and dest.stat().st_size != src.size:
        problem = f"size {dest.stat().st_size} bytes, expected {src.size}"
    elif src.sha256 is not None:
        got = file_digest(dest)
        if got != src.sha256.lower():
            problem = f"SHA-256 {got}, expected {src.sha256}"
    if problem:
        bad = dest.with_name(dest.name + ".corrupt")
        os.replace(dest, bad)
        raise DownloadError(f"{dest.name} downloaded from {src.url} is not the expected file ({problem}). "
                            f"It was moved to {bad}; run the command again to download it afresh.")
    return dest


# --------------------------------------------------------------------------- archives
def safe_member_path(name: str) -> PurePosixPath | None:
    """Normalised relative path of an archive member; ``None`` if it escapes the target."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        return None
    parts = [x for x in p.parts if x not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _archive_problem(archive: Path, why: str) -> DownloadError:
    return DownloadError(
        f"{archive} cannot be unpacked ({why}). The download is probably truncated or corrupt: "
        f"delete {archive} and run the command again."
    )


def _check_archive(archive: Path) -> str:
    if not archive.is_file():
        raise DownloadError(f"archive {archive} is missing")
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    if _looks_like_html(archive):
        raise DownloadError(
            f"{archive} is a web page, not an archive: the server (often Google Drive's quota or "
            f"virus-scan page) answered with HTML. Delete {archive} and try again later, or download "
            "the file in a browser and save it at that path."
        )
    raise _archive_problem(archive, "not a zip or tar file")


def _write_member(src: IO[bytes], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def extract_archive(archive: Path, dest: Path, *, progress: bool = True) -> list[str]:
    """Unpack a zip or tar(.gz/.bz2/.xz) archive into ``dest``; return its top-level names.

    Members with absolute paths or ``..`` are refused (the whole archive is
    rejected); symbolic/hard links and special files are skipped.
    """
    from vl2v.utils.progress import progress as tqdm

    archive, dest = Path(archive), Path(dest)
    kind = _check_archive(archive)
    dest.mkdir(parents=True, exist_ok=True)
    tops: set[str] = set()

    def place(name: str, is_dir: bool, is_file: bool, open_member: Callable[[], IO[bytes] | None]) -> None:
        rel = safe_member_path(name)
        if rel is None:
            raise DownloadError(f"{archive} has an unsafe member path {name!r}; refusing to unpack it")
        if rel == PurePosixPath("."):
            return
        tops.add(rel.parts[0])
        target = dest.joinpath(*rel.parts)
        if is_dir:
            target.mkdir(parents=True, exist_ok=True)
        elif is_file:  # links, devices and fifos are skipped on purpose
            src = open_member()
            assert src is not None
            with src:
                _write_member(src, target)

    bar = dict(desc=f"unpacking {archive.name}", unit="file", disable=not progress)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                for info in tqdm(zf.infolist(), **bar):
                    place(info.filename, info.is_dir(), not info.is_dir(), lambda i=info: zf.open(i))
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tqdm(tf, **bar):
                    place(member.name, member.isdir(), member.isfile(), lambda m=member: tf.extractfile(m))
    except DownloadError:
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        raise _archive_problem(archive, f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise _os_problem(archive, dest, exc) from None
    return sorted(tops)


def _os_problem(archive: Path, dest: Path, exc: OSError) -> DownloadError:
    if exc.errno is None:  # gzip/bz2/lzma decoding errors are OSErrors without errno
        return _archive_problem(archive, f"{type(exc).__name__}: {exc}")
    if exc.errno == errno.ENOSPC:
        return DownloadError(f"no space left on the device while unpacking {archive} into {dest}: "
                             "free some space and run the command again")
    return DownloadError(f"could not write while unpacking {archive} into {dest}: {exc}")


def iter_tar_files(archive: Path, *, progress: bool = True) -> Iterator[tuple[PurePosixPath, IO[bytes]]]:
    """Stream ``(relative path, file object)`` for each regular file of a tar archive.

    One sequential pass, nothing written to disk: used to pick a subset of a
    large archive (TerraIncognita's images) without unpacking all of it.
    """
    from vl2v.utils.progress import bar as _bar

    archive = Path(archive)
    if _check_archive(archive) != "tar":
        raise _archive_problem(archive, "expected a tar archive")
    try:
        with tarfile.open(archive, "r|*") as tf, \
                _bar(None, desc=f"reading {archive.name}", unit="file", disable=not progress) as bar:
            for member in tf:
                bar.update(1)
                if not member.isfile():
                    continue
                rel = safe_member_path(member.name)
                if rel is None or rel == PurePosixPath("."):
                    continue
                src = tf.extractfile(member)
                if src is None:
                    continue
                yield rel, src
    except (tarfile.TarError, EOFError, zlib.error, ValueError) as exc:
        raise _archive_problem(archive, f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise _os_problem(archive, archive.parent, exc) from None


# --------------------------------------------------------------------------- staging
@contextlib.contextmanager
def dataset_lock(root: Path, name: str) -> Iterator[None]:
    """Hold ``ROOT/.NAME.lock`` so two downloads of one dataset cannot interleave."""
    root.mkdir(parents=True, exist_ok=True)
    lock_path = root / f".{name}.lock"
    fh = open(lock_path, "a+")
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no lock
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise DownloadError(
                    f"another download of {name} into {root} is running (it holds {lock_path}); "
                    "wait for it to finish"
                ) from None
        yield
    finally:
        fh.close()


def staging_path(root: Path, name: str) -> Path:
    return Path(root) / f".{name}.incomplete"


def fresh_staging(root: Path, name: str) -> Path:
    """An empty ``ROOT/.NAME.incomplete`` folder (a stale one from an interrupted run is removed)."""
    path = staging_path(root, name)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def read_marker(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MARKER_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_marker(folder: Path, info: dict[str, Any]) -> None:
    from vl2v.utils.io import atomic_write_json

    atomic_write_json(Path(folder) / MARKER_NAME, info)


def finalize(built: Path, final: Path, info: dict[str, Any]) -> Path:
    """Write the completion marker into ``built`` then rename it onto ``final`` (which must not exist)."""
    if final.exists():
        raise DownloadError(f"{final} appeared while the download was running; not overwriting it")
    write_marker(built, info)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(built, final)
    return final
