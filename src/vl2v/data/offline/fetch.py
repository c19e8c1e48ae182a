"""Fetch the pinned source packages with the ordinary clients and unpack them.

npm packages come from ``npm pack NAME@VERSION``; Debian packages from one
``apt-get update`` into a private lists folder followed by
``apt-get download NAME=VERSION``. Archives live in the package cache
(``cache/npm``, ``cache/deb``) and are reused; every archive is checked against
the sha256 pinned in ``pins.json`` (or, for a pin without one, the hash seen
on its first fetch, kept in ``cache/observed_sha256.json``), so changed
upstream bytes stop the build instead of silently changing the dataset.

An archive can also be dropped into the cache by hand (same file name as the
client writes) on a machine without npm or apt-get.
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import os
import posixpath
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Iterable

from vl2v.utils.hashing import file_digest
from vl2v.utils.io import atomic_write_json

EXTRACT_VERSION = 2  # bump when the unpacking changes, so cached unpacked trees are redone


class FetchError(FileNotFoundError):
    """A source package could not be obtained or did not match its pin.

    A ``FileNotFoundError`` so that the command line prints the message (what
    failed, which package, what to do) without a traceback.
    """

    def __str__(self) -> str:  # OSError would prefix errno fields otherwise
        return str(self.args[0])


@dataclass(frozen=True)
class PackagePin:
    key: str  # short name used in image ids and rules
    name: str
    version: str
    kind: str  # "npm" or "deb"
    licence: str
    credit: str = ""
    sha256: str | None = None
    extract: tuple[str, ...] = ()  # path prefixes inside the archive ('/'-terminated = folder)
    skip_ext: tuple[str, ...] = ()
    family: str = ""  # the artwork's family (designer / design system); the LiT build refuses a benchmark family

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def wants(self, member: str) -> bool:
        if any(member.lower().endswith(e) for e in self.skip_ext):
            return False
        if not self.extract:
            return True
        return any(member == p or (p.endswith("/") and member.startswith(p)) for p in self.extract)


def load_pins(path: Path | None = None) -> list[PackagePin]:
    if path is None:
        text = resources.files("vl2v.data.offline").joinpath("pins.json").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    out = []
    for e in json.loads(text)["packages"]:
        e = dict(e)
        e["extract"] = tuple(e.get("extract", ()))
        e["skip_ext"] = tuple(e.get("skip_ext", ()))
        out.append(PackagePin(**e))
    return out


# --------------------------------------------------------------------- the cache
@dataclass
class PackageCache:
    root: Path
    observed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        f = self.root / "observed_sha256.json"
        if f.is_file():
            self.observed = json.loads(f.read_text("utf-8"))

    @property
    def npm_dir(self) -> Path:
        return self.root / "npm"

    @property
    def deb_dir(self) -> Path:
        return self.root / "deb"

    def archive_name(self, pin: PackagePin) -> str:
        if pin.kind == "npm":  # npm pack: '@scope/name' -> 'scope-name-VERSION.tgz'
            return f"{pin.name.lstrip('@').replace('/', '-')}-{pin.version}.tgz"
        # apt-get download: NAME_VERSION_ARCH.deb with ':' (epoch) written as '%3a'
        return f"{pin.name}_{pin.version.replace(':', '%3a')}_all.deb"

    def archive_path(self, pin: PackagePin) -> Path:
        return (self.npm_dir if pin.kind == "npm" else self.deb_dir) / self.archive_name(pin)

    def expected_sha256(self, pin: PackagePin) -> str | None:
        return pin.sha256 or self.observed.get(f"{pin.name}@{pin.version}")

    def record(self, pin: PackagePin, digest: str) -> None:
        self.observed[f"{pin.name}@{pin.version}"] = digest
        atomic_write_json(self.root / "observed_sha256.json", self.observed)

    def verify(self, pin: PackagePin, path: Path) -> str:
        digest = file_digest(path)
        want = self.expected_sha256(pin)
        if want is None:
            self.record(pin, digest)
        elif digest != want:
            raise FetchError(
                f"{pin.label}: archive {path} has sha256 {digest}, but {want} is pinned. The upstream "
                "bytes changed (or the download is corrupt). Delete the file to fetch it again; if the new "
                "bytes are intended, update the pin in vl2v/data/offline/pins.json.")
        return digest


# --------------------------------------------------------------------- clients
def _need(tool: str, pins: list[PackagePin], hint: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        names = ", ".join(p.label for p in pins)
        raise FetchError(f"`{tool}` is not installed, and it is needed to fetch {names}. {hint}")
    return exe


def _run(cmd: list[str], *, cwd: Path, what: str) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except subprocess.TimeoutExpired as exc:
        raise FetchError(f"{what}: `{' '.join(cmd)}` took more than 30 minutes; check the network") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-6:]
        raise FetchError(f"{what}: `{' '.join(cmd)}` failed (exit {proc.returncode}):\n    "
                         + "\n    ".join(tail)
                         + "\n  Check that the package registry is reachable and the pinned version still exists; "
                         "run the command by hand to see its full output.")
    return proc


def npm_pack(pin: PackagePin, cache: PackageCache) -> Path:
    exe = _need("npm", [pin], "Install Node.js/npm, or put the archive into "
                f"{cache.npm_dir} by hand (file name {cache.archive_name(pin)}).")
    cache.npm_dir.mkdir(parents=True, exist_ok=True)
    proc = _run([exe, "pack", f"{pin.name}@{pin.version}", "--json", "--ignore-scripts",
                 "--pack-destination", str(cache.npm_dir)], cwd=cache.npm_dir,
                what=f"fetching npm package {pin.label}")
    try:
        fname = json.loads(proc.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError):
        fname = cache.archive_name(pin)
    path = cache.npm_dir / Path(fname).name
    if not path.is_file():
        raise FetchError(f"fetching npm package {pin.label}: npm reported success but {path} is missing")
    if path != cache.archive_path(pin):
        os.replace(path, cache.archive_path(pin))
    return cache.archive_path(pin)


def _apt_options(cache: PackageCache) -> list[str]:
    lists = cache.root / "apt" / "lists"
    aptcache = cache.root / "apt" / "cache"
    for d in (lists / "partial", aptcache / "archives" / "partial"):
        d.mkdir(parents=True, exist_ok=True)
    try:
        user = getpass.getuser()
    except Exception:  # pragma: no cover - no user name
        user = "root"
    return ["-q", "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={aptcache}",
            "-o", "Debug::NoLocking=1", "-o", f"APT::Sandbox::User={user}"]


def apt_update(pins: list[PackagePin], cache: PackageCache) -> None:
    exe = _need("apt-get", pins, "These are Debian packages: build on a Debian/Ubuntu machine, or put "
                f"the .deb files into {cache.deb_dir} by hand.")
    _run([exe, *_apt_options(cache), "update"], cwd=cache.root,
         what="refreshing the Debian package lists (apt-get update)")


def apt_download(pin: PackagePin, cache: PackageCache) -> Path:
    exe = _need("apt-get", [pin], f"Put {cache.archive_name(pin)} into {cache.deb_dir} by hand.")
    cache.deb_dir.mkdir(parents=True, exist_ok=True)
    _run([exe, *_apt_options(cache), "download", f"{pin.name}={pin.version}"], cwd=cache.deb_dir,
         what=f"fetching Debian package {pin.label} (is version {pin.version} still in your apt sources?)")
    found = sorted(cache.deb_dir.glob(f"{pin.name}_{pin.version.replace(':', '%3a')}_*.deb"))
    if not found:
        raise FetchError(f"fetching Debian package {pin.label}: apt-get reported success but no .deb "
                         f"appeared in {cache.deb_dir}")
    if found[0] != cache.archive_path(pin):
        os.replace(found[0], cache.archive_path(pin))
    return cache.archive_path(pin)


def fetch_packages(pins: list[PackagePin], cache: PackageCache,
                   progress: Callable[[Iterable], Iterable] = lambda x: x) -> dict[str, Path]:
    """Make sure every pinned archive is in the cache and matches its hash; return key -> path."""
    out: dict[str, Path] = {}
    missing = [p for p in pins if not cache.archive_path(p).is_file()]
    if any(p.kind == "deb" for p in missing):
        apt_update([p for p in missing if p.kind == "deb"], cache)
    for pin in progress(pins):
        path = cache.archive_path(pin)
        if not path.is_file():
            path = npm_pack(pin, cache) if pin.kind == "npm" else apt_download(pin, cache)
        cache.verify(pin, path)
        out[pin.key] = path
    return out


# --------------------------------------------------------------------- unpacking
def _ar_members(data: bytes) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise FetchError("not a Debian package (ar archive magic missing)")
    out: dict[str, bytes] = {}
    off = 8
    while off + 60 <= len(data):
        hdr = data[off:off + 60]
        name = hdr[:16].decode("ascii", "replace").strip().rstrip("/")
        size = int(hdr[48:58].decode("ascii").strip())
        out[name] = data[off + 60: off + 60 + size]
        off += 60 + size + (size & 1)
    return out


def _safe_member(name: str) -> str | None:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def _extract_tar(tf: tarfile.TarFile, pin: PackagePin, dest: Path) -> int:
    """Extract wanted regular files; symlinks (Debian packages share files that way) become copies."""
    n = 0
    links: dict[str, str] = {}
    for m in tf:
        rel = _safe_member(m.name)
        if rel is None or not pin.wants(rel):
            continue
        if m.issym():
            target = _safe_member(posixpath.normpath(posixpath.join(posixpath.dirname(rel), m.linkname)))
            if target is not None and not m.linkname.startswith("/"):
                links[rel] = target
            continue
        if not m.isfile():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tf.extractfile(m)
        assert src is not None
        with open(target, "wb") as fh:
            shutil.copyfileobj(src, fh)
        n += 1
    progress = True
    while links and progress:  # resolve chains of links, inside the extracted tree only
        progress = False
        for rel, target in sorted(links.items()):
            src = dest / target
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest / rel)
                del links[rel]
                n += 1
                progress = True
    return n


def extract_package(pin: PackagePin, archive: Path, cache: PackageCache) -> Path:
    """Unpack the wanted members of ``archive`` once; return the folder (reused while the bytes match)."""
    digest = cache.expected_sha256(pin) or file_digest(archive)
    spec = hashlib.sha256(json.dumps([EXTRACT_VERSION, digest, pin.extract, pin.skip_ext]).encode()).hexdigest()[:12]
    dest = cache.root / "extracted" / f"{pin.key}-{spec}"
    if (dest / ".complete").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if pin.kind == "npm":
            with tarfile.open(archive, "r:*") as tf:
                n = _extract_tar(tf, pin, tmp)
        else:
            members = _ar_members(archive.read_bytes())
            data_name = next((k for k in members if k.startswith("data.tar")), None)
            if data_name is None:
                raise FetchError(f"{pin.label}: {archive} has no data.tar member")
            if data_name.endswith(".zst"):
                raise FetchError(f"{pin.label}: {archive} uses zstd compression, which this Python cannot "
                                 "read; install `zstandard` or extract it with dpkg-deb -x")
            with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tf:
                n = _extract_tar(tf, pin, tmp)
        if n == 0:
            raise FetchError(f"{pin.label}: nothing to extract from {archive} (wanted {list(pin.extract)})")
        (tmp / ".complete").write_text(f"{pin.label}\n{digest}\n", encoding="utf-8")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest
