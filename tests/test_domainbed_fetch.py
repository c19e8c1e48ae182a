"""The fetch layer: resumable HTTP (against a loopback server), Google Drive via gdown, checks, unpacking."""

from __future__ import annotations

import http.server
import io
import sys
import tarfile
import threading
import types
import zipfile
from pathlib import Path

import pytest

from vl2v.data import download as dl
from vl2v.data.download import DownloadError, Source
from vl2v.utils.hashing import file_digest

PAYLOAD = bytes(range(256)) * 4000  # ~1 MB


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    honour_range = True
    seen_ranges: list[str | None] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        rng = self.headers.get("Range")
        type(self).seen_ranges.append(rng)
        start = 0
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    handler = type("H", (_Handler,), {"files": {"/data.bin": PAYLOAD}, "seen_ranges": [], "honour_range": True})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_fetch_downloads_atomically(server, tmp_path):
    base, handler = server
    dest = tmp_path / "a" / "data.bin"
    dl.http_fetch(f"{base}/data.bin", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("data.bin.part").exists()
    assert handler.seen_ranges == [None]


def test_http_fetch_resumes_a_partial_file(server, tmp_path):
    base, handler = server
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(PAYLOAD[:300_000])
    dl.http_fetch(f"{base}/data.bin", dest, progress=False)
    assert handler.seen_ranges == ["bytes=300000-"]
    assert dest.read_bytes() == PAYLOAD


def test_http_fetch_restarts_when_range_is_ignored(server, tmp_path):
    base, handler = server
    handler.honour_range = False
    dest = tmp_path / "data.bin"
    dest.with_name("data.bin.part").write_bytes(b"stale bytes from another file")
    dl.http_fetch(f"{base}/data.bin", dest, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_http_fetch_404_names_the_url(server, tmp_path):
    base, _ = server
    dest = tmp_path / "missing.zip"
    with pytest.raises(DownloadError, match=r"/missing\.zip failed: HTTP 404"):
        dl.http_fetch(f"{base}/missing.zip", dest, progress=False)
    assert not dest.exists()


def test_http_fetch_unreachable_keeps_partial_and_says_so(tmp_path):
    dest = tmp_path / "x.zip"
    dest.with_name("x.zip.part").write_bytes(b"123")
    # port 9 on loopback: nothing listens, the connection is refused at once
    with pytest.raises(DownloadError, match="run the command again to resume"):
        dl.http_fetch("http://127.0.0.1:9/x.zip", dest, progress=False, retries=0)
    assert dest.with_name("x.zip.part").read_bytes() == b"123" and not dest.exists()


def test_gdrive_id():
    assert dl.gdrive_id("https://drive.google.com/uc?id=1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd") == \
        "1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"
    assert dl.gdrive_id("https://drive.google.com/file/d/abc123/view?usp=sharing") == "abc123"
    assert dl.gdrive_id("http://csr.bu.edu/ftp/visda/2019/multi-source/real.zip") is None


def _fake_gdown(monkeypatch, behaviour):
    calls = []

    def download(**kwargs):
        calls.append(kwargs)
        return behaviour(**kwargs)

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download=download))
    return calls


def test_default_fetch_sends_drive_links_to_gdown(monkeypatch, tmp_path):
    def ok(id, output, quiet, resume):
        Path(output).write_bytes(b"zip bytes")
        return output

    calls = _fake_gdown(monkeypatch, ok)
    dest = tmp_path / "PACS.zip"
    dl.default_fetch("https://drive.google.com/uc?id=FILEID", dest)
    assert dest.read_bytes() == b"zip bytes"
    assert calls == [{"id": "FILEID", "output": str(dest), "quiet": False, "resume": True}]


def test_gdown_failure_explains_the_workaround(monkeypatch, tmp_path):
    def refuse(**kwargs):
        raise RuntimeError("Too many users have viewed or downloaded this file recently")

    _fake_gdown(monkeypatch, refuse)
    dest = tmp_path / "PACS.zip"
    with pytest.raises(DownloadError) as err:
        dl.gdrive_fetch("https://drive.google.com/uc?id=FILEID", dest)
    msg = str(err.value)
    assert "Too many users" in msg and f"save the file as {dest}" in msg


def test_missing_gdown_is_explained(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gdown", None)  # makes `import gdown` raise ImportError
    with pytest.raises(DownloadError, match="pip install gdown"):
        dl.gdrive_fetch("https://drive.google.com/uc?id=X", tmp_path / "x.zip")


def test_fetch_source_skips_present_file_and_checks_it(tmp_path):
    calls = []

    def fetch(url, dest):
        calls.append(url)
        dest.write_bytes(b"hello")

    src = Source("http://example.invalid/f.txt", "f.txt", sha256=file_digest(_write(tmp_path / "h", b"hello")))
    path = dl.fetch_source(src, tmp_path / "cache", fetch)
    assert path.read_bytes() == b"hello" and len(calls) == 1
    dl.fetch_source(src, tmp_path / "cache", fetch)
    assert len(calls) == 1  # already there: not fetched again
    with pytest.raises(DownloadError, match="size 5 bytes, expected 6"):
        dl.fetch_source(Source(src.url, "f.txt", size=6), tmp_path / "cache", fetch)
    assert (tmp_path / "cache" / "f.txt.corrupt").exists() and not (tmp_path / "cache" / "f.txt").exists()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_extract_skips_links_and_refuses_escapes(tmp_path):
    arc = tmp_path / "a.tar"
    with tarfile.open(arc, "w") as tf:
        info = tarfile.TarInfo("top/file.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
        link = tarfile.TarInfo("top/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    assert dl.extract_archive(arc, tmp_path / "out", progress=False) == ["top"]
    assert (tmp_path / "out" / "top" / "file.txt").read_bytes() == b"hi"
    assert not (tmp_path / "out" / "top" / "link").exists()

    bad = tmp_path / "b.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("/abs/evil.txt", b"x")
    with pytest.raises(DownloadError, match="unsafe"):
        dl.extract_archive(bad, tmp_path / "out2", progress=False)


def test_lock_refuses_a_concurrent_download(tmp_path):
    with dl.dataset_lock(tmp_path, "PACS"):
        with pytest.raises(DownloadError, match="another download of PACS"):
            with dl.dataset_lock(tmp_path, "PACS"):
                pass
    with dl.dataset_lock(tmp_path, "PACS"):  # released afterwards
        pass
