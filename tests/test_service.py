"""The embedding service (`vl2v serve`), tested over real HTTP on loopback (uvicorn in a thread).

Covers: identity and health, API keys (401), image and text round trips equal to
the local teacher, image modes and resizing, size limits and decompression
bombs (413), malformed bodies and undecodable images (4xx, never 5xx),
idempotent request ids (replayed, billed once, 409 on reuse), exact metering
under 32 concurrent clients, no writes outside the data directory (a real
`vl2v serve` subprocess under an audit hook), and a bounded schemathesis run.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import vl2v
from conftest import TinyTeacher, make_image
from vl2v.data.transforms import center_view
from vl2v.serving.keys import KeysFileError, add_key, parse_keys, token_hash
from vl2v.serving.live import LiveServer, wait_until_healthy
from vl2v.serving.service import ServiceConfig, create_app

SIZE = 24  # TinyTeacher's image size


class CountingTeacher(TinyTeacher):
    """TinyTeacher that counts every image and text it embeds (the ground truth for metering)."""

    def __init__(self) -> None:
        super().__init__()
        self.images_seen = 0
        self.texts_seen = 0
        self._count_lock = threading.Lock()

    def embed_images(self, images):
        with self._count_lock:
            self.images_seen += int(images.shape[0])
        return super().embed_images(images)

    def embed_texts(self, texts):
        with self._count_lock:
            self.texts_seen += len(texts)
        return super().embed_texts(texts)


def png_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def as_input(img: Image.Image) -> torch.Tensor:
    """What a local teacher is shown for an RGB image already at its size."""
    return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("serve-data")
    tokens = {name: add_key(data / "keys.txt", name) for name in ("alice", "bob")}
    teacher = CountingTeacher()
    cfg = ServiceConfig(data, max_batch_images=8, max_batch_texts=16, max_text_chars=100,
                        max_request_bytes=256 * 1024, max_image_pixels=512 * 512, max_request_pixels=4 * 512 * 512)
    app = create_app(teacher, cfg, name="tiny-test")
    with LiveServer(app) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as client:
            yield {"url": srv.url, "client": client, "tokens": tokens, "teacher": teacher,
                   "service": app.state.service, "data": data, "cfg": cfg}


def auth(served, name="alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {served['tokens'][name]}"}


def post_images(served, blobs, name="alice", **extra):
    headers = {**auth(served, name), **extra.pop("headers", {})}
    return served["client"].post("/v1/embeddings/images", headers=headers,
                                 json={"images": [b64(b) for b in blobs], **extra})


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["status"] == status and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


# --------------------------------------------------------------------------- identity, keys
def test_health_model_and_openapi(served):
    c = served["client"]
    assert c.get("/v1/health").json() == {"status": "ok", "api_version": "v1"}
    info = c.get("/v1/model", headers=auth(served)).json()
    assert info["identity"] == "tiny-test(dim=16,size=24)" and info["name"] == "tiny-test"
    assert (info["embed_dim"], info["image_size"]) == (16, SIZE)
    assert info["limits"]["max_batch_images"] == 8 and info["image_formats"] == ["png", "jpeg"]
    spec = c.get("/openapi.json").json()
    assert {"/v1/model", "/v1/embeddings/images", "/v1/embeddings/texts", "/v1/usage", "/v1/health"} <= set(spec["paths"])
    assert c.get("/docs").status_code == 404  # no interactive docs pulling scripts from elsewhere


@pytest.mark.parametrize("path", ["/v1/model", "/v1/usage", "/v1/embeddings/images", "/v1/embeddings/texts", "/v1/nope"])
def test_missing_or_wrong_key_is_401(served, path):
    c = served["client"]
    method = "POST" if "embeddings" in path else "GET"
    body = {"texts": ["a"]} if "texts" in path else {"images": ["x"]}
    r = c.request(method, path, json=body)
    assert_error(r, 401, "missing_api_key")
    assert r.headers["www-authenticate"].startswith("Bearer")
    for headers in ({"Authorization": "Bearer vl2v_not-a-real-key-at-all"}, {"X-API-Key": "vl2v_not-a-real-key-at-all"},
                    {"Authorization": f"Basic {served['tokens']['alice']}"}, {"Authorization": "Bearer"}, {"Authorization": "Token abc"}):
        assert_error(c.request(method, path, json=body, headers=headers), 401)


def test_both_key_headers_work(served):
    c = served["client"]
    assert c.get("/v1/usage", headers={"X-API-Key": served["tokens"]["bob"]}).json()["key"] == "bob"
    assert c.get("/v1/usage", headers=auth(served, "alice")).json()["key"] == "alice"


def test_keys_file_parsing_and_add_key(tmp_path):
    f = tmp_path / "keys.txt"
    tok = add_key(f, "ci")
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert tok not in f.read_text() and token_hash(tok) in f.read_text()  # only the hash is stored
    assert parse_keys(f.read_text()) == {token_hash(tok): "ci"}
    with pytest.raises(KeysFileError, match="already exists"):
        add_key(f, "ci")
    with pytest.raises(KeysFileError, match="bad key name"):
        add_key(f, "no spaces")
    for bad, msg in [("a short", "shorter"), ("a sha256:12", "64 hex"), ("a", "expected"),
                     ("a tokentokentokentoken c", "bad limit"),
                     ("a tokentokentokentoken\na tokentokentokentoken2", "twice"),
                     ("a tokentokentokentoken\nb tokentokentokentoken", "same secret")]:
        with pytest.raises(KeysFileError, match=msg):
            parse_keys(bad)
    assert parse_keys("# only a comment\n\nx plaintexttokenXYZ12  # trailing\n") == {token_hash("plaintexttokenXYZ12"): "x"}


def test_new_keys_are_picked_up_without_restart(served):
    token = add_key(served["data"] / "keys.txt", "carol")
    deadline = time.time() + 5
    while time.time() < deadline:
        r = served["client"].get("/v1/usage", headers={"X-API-Key": token})
        if r.status_code == 200:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.json()["key"] == "carol"


# --------------------------------------------------------------------------- round trips
def test_png_round_trip_equals_local_teacher(served):
    imgs = [make_image(c, d, 0, SIZE) for c in range(3) for d in range(2)]
    r = post_images(served, [png_bytes(i) for i in imgs])
    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "false"
    data = r.json()
    assert data["count"] == 6 and data["embed_dim"] == 16 and data["model"] == "tiny-test(dim=16,size=24)"
    got = torch.tensor(data["embeddings"])
    want = TinyTeacher().embed_images(torch.stack([as_input(i) for i in imgs]))
    assert torch.allclose(got, want, atol=1e-6)
    # base64 encoding is bit-exact float32
    r = post_images(served, [png_bytes(i) for i in imgs], encoding="base64")
    raw = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in r.json()["embeddings"]])
    assert np.array_equal(raw, got.numpy().astype(np.float32))


def test_texts_round_trip(served):
    r = served["client"].post("/v1/embeddings/texts", headers=auth(served), json={"texts": ["a photo of a dog", "é ✓"]})
    assert r.status_code == 200
    assert torch.allclose(torch.tensor(r.json()["embeddings"]), TinyTeacher().embed_texts(["a photo of a dog", "é ✓"]), atol=1e-6)


def test_image_modes_and_resizing(served):
    base = make_image(1, 0, 3, SIZE)
    arr = np.asarray(base)
    rgba = Image.fromarray(np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)]), "RGBA")
    cases = {
        "rgba-opaque": (png_bytes(rgba), as_input(base)),
        "gray": (png_bytes(base.convert("L")), as_input(base.convert("L"))),
        "palette": (png_bytes(base.convert("P")), as_input(base.convert("P"))),
        "16-bit": (png_bytes(Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)),
                   as_input(base.convert("L"))),
    }
    for name, (blob, want_x) in cases.items():
        r = post_images(served, [blob])
        assert r.status_code == 200, (name, r.text)
        got = torch.tensor(r.json()["embeddings"])
        assert torch.allclose(got, TinyTeacher().embed_images(want_x[None]), atol=1e-5), name
    # larger, non-square: the teacher's own evaluation view (shorter side to S, centre crop)
    big = make_image(2, 1, 0, 64).crop((0, 0, 64, 40))
    r = post_images(served, [png_bytes(big)])
    x = center_view(torch.from_numpy(np.asarray(big).copy()).permute(2, 0, 1), SIZE)
    assert torch.allclose(torch.tensor(r.json()["embeddings"]), TinyTeacher().embed_images(x[None]), atol=1e-5)
    # JPEG, CMYK JPEG and transparency are accepted
    for blob in (jpeg_bytes(base, quality=95), jpeg_bytes(base.convert("CMYK")),
                 png_bytes(Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0)))):
        assert post_images(served, [blob]).status_code == 200


# --------------------------------------------------------------------------- limits
def _bomb_png(w: int, h: int) -> bytes:
    """A valid-looking PNG header for w x h 8-bit gray with one tiny compressed row: a decompression bomb."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")


def test_oversize_is_413(served):
    c, cfg = served["client"], served["cfg"]
    small = png_bytes(make_image(0, 0, 0, SIZE))
    assert_error(post_images(served, [small] * 9), 413, "batch_too_large")
    assert_error(post_images(served, [_bomb_png(100_000, 100_000)]), 413, "image_too_large")
    assert_error(post_images(served, [png_bytes(Image.new("RGB", (600, 600)))]), 413, "image_too_large")
    assert_error(post_images(served, [png_bytes(Image.new("RGB", (512, 512)))] * 5), 413, "request_too_many_pixels")
    noise = Image.fromarray(np.random.RandomState(0).randint(0, 256, (300, 300, 3), dtype=np.uint8))
    r = post_images(served, [png_bytes(noise)] * 2)  # ~540 KB of base64 > 256 KiB
    assert_error(r, 413, "request_too_large")
    # a body far over the limit, streamed without Content-Length, still gets a JSON 413
    def gen():
        for _ in range(40):
            yield b"x" * 65536
    r = c.post("/v1/embeddings/images", headers={**auth(served), "Content-Type": "application/json"}, content=gen())
    assert_error(r, 413, "request_too_large")
    r = c.post("/v1/embeddings/texts", headers=auth(served), json={"texts": ["x" * (cfg.max_text_chars + 1)]})
    assert_error(r, 413, "text_too_long")
    r = c.post("/v1/embeddings/texts", headers=auth(served), json={"texts": ["a"] * (cfg.max_batch_texts + 1)})
    assert_error(r, 413, "batch_too_large")


def test_malformed_requests_are_4xx(served):
    c, h = served["client"], auth(served)
    good = png_bytes(make_image(0, 0, 0, SIZE))
    js = {**h, "Content-Type": "application/json"}
    # malformed bodies -> 422
    for content in (b"{not json", b"[]", b"null", b'{"images": "abc"}', b'{"images": []}', b'{"images": [1, 2]}',
                    b'{"imgs": ["a"]}', b'{"images": ["aGk="], "extra": 1}', b'{"images": ["aGk="], "encoding": "hex"}',
                    b"\xff\xfe\x00garbage"):
        assert_error(c.post("/v1/embeddings/images", headers=js, content=content), 422)
    assert_error(c.post("/v1/embeddings/texts", headers=js, content=b'{"texts": ["\\ud800"]}'), 422, "invalid_text")
    # not JSON at all -> 415
    assert_error(c.post("/v1/embeddings/images", headers=h, content=b"images=abc"), 415, "unsupported_media_type")
    assert_error(c.post("/v1/embeddings/images", headers=h, files={"f": ("a.png", good, "image/png")}), 415)
    # bad images: not base64 / empty -> 422; not PNG/JPEG -> 415; broken PNG/JPEG -> 422
    assert_error(c.post("/v1/embeddings/images", headers=h, json={"images": ["%%%not base64"]}), 422, "invalid_base64")
    assert_error(c.post("/v1/embeddings/images", headers=h, json={"images": [""]}), 422, "empty_image")
    gif = io.BytesIO()
    make_image(0, 0, 0, SIZE).save(gif, format="GIF")
    for blob in (b"hello world", gif.getvalue(), b"\x00" * 100, b"BM" + b"\x00" * 60):
        assert_error(post_images(served, [good, blob]), 415, "unsupported_image_type")
    corrupt = bytearray(good)
    corrupt[40:60] = b"\xde\xad" * 10
    for blob in (good[:60], bytes(corrupt), good[:8], jpeg_bytes(make_image(0, 0, 0, SIZE))[:200], b"\xff\xd8\xff" + b"\x00" * 50,
                 _bomb_png(0, 0)):
        err = assert_error(post_images(served, [blob]), 422)
        assert err["code"] == "undecodable_image", err
    # bad idempotency id -> 422
    assert_error(post_images(served, [good], headers={"Idempotency-Key": "has spaces/slashes"}), 422)
    # unknown route, wrong method
    assert_error(c.get("/v1/nope", headers=h), 404)
    assert_error(c.get("/v1/embeddings/images", headers=h), 405)
    # nothing above was billed
    assert c.get("/v1/usage", headers=h).status_code == 200


def test_client_mistakes_are_not_billed(served):
    before = served["client"].get("/v1/usage", headers=auth(served, "bob")).json()
    post_images(served, [b"nope"], name="bob")
    post_images(served, [_bomb_png(9000, 9000)], name="bob")
    after = served["client"].get("/v1/usage", headers=auth(served, "bob")).json()
    assert (after["image_queries"], after["requests"]) == (before["image_queries"], before["requests"])


# --------------------------------------------------------------------------- idempotency
def test_idempotent_replay_is_not_billed_twice(served):
    c = served["client"]
    blobs = [png_bytes(make_image(i, 1, 2, SIZE)) for i in range(3)]
    before = c.get("/v1/usage", headers=auth(served, "bob")).json()
    seen = served["teacher"].images_seen
    r1 = post_images(served, blobs, name="bob", headers={"Idempotency-Key": "batch-0001"})
    r2 = post_images(served, blobs, name="bob", headers={"Idempotency-Key": "batch-0001"})
    assert r1.status_code == r2.status_code == 200
    assert r1.headers["idempotent-replayed"] == "false" and r2.headers["idempotent-replayed"] == "true"
    assert r1.content == r2.content and r1.json()["request_id"] == "batch-0001"
    assert served["teacher"].images_seen == seen + 3  # embedded once
    after = c.get("/v1/usage", headers=auth(served, "bob")).json()
    assert after["image_queries"] - before["image_queries"] == 3
    assert after["requests"] - before["requests"] == 1 and after["replays"] - before["replays"] == 1
    # the same id with other content is refused; the same id under another key is independent
    assert_error(post_images(served, blobs[:2], name="bob", headers={"Idempotency-Key": "batch-0001"}), 409,
                 "idempotency_key_reused")
    r3 = post_images(served, blobs, name="alice", headers={"Idempotency-Key": "batch-0001"})
    assert r3.headers["idempotent-replayed"] == "false"


def test_concurrent_retries_of_one_request_are_computed_once(served):
    blobs = [png_bytes(make_image(i, 2, 5, SIZE)) for i in range(4)]
    seen = served["teacher"].images_seen
    out: list[httpx.Response] = []

    def go():
        with httpx.Client(base_url=served["url"], timeout=30) as c:
            out.append(c.post("/v1/embeddings/images", headers={**auth(served), "Idempotency-Key": "race-1"},
                              json={"images": [b64(b) for b in blobs]}))

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in out] == [200] * 8
    assert len({r.content for r in out}) == 1
    assert sum(r.headers["idempotent-replayed"] == "false" for r in out) == 1
    assert served["teacher"].images_seen == seen + 4


# --------------------------------------------------------------------------- metering under load
def test_metering_exact_under_32_concurrent_clients(tmp_path):
    data = tmp_path / "data"
    names = [f"k{i}" for i in range(4)]
    tokens = {n: add_key(data / "keys.txt", n) for n in names}
    teacher = CountingTeacher()
    app = create_app(teacher, ServiceConfig(data, max_batch_images=8))
    pool = [png_bytes(make_image(i % 6, i % 3, i, SIZE)) for i in range(16)]
    rng = np.random.RandomState(0)
    plans = [[(int(rng.randint(1, 9)), bool(rng.rand() < 0.25)) for _ in range(6)] for _ in range(32)]
    got_images = [0] * 32
    statuses: list[int] = []
    lock = threading.Lock()

    with LiveServer(app) as srv:
        def client(ci: int) -> None:
            key = tokens[names[ci % len(names)]]
            with httpx.Client(base_url=srv.url, timeout=60, headers={"X-API-Key": key}) as c:
                for j, (n, retry) in enumerate(plans[ci]):
                    body = {"images": [b64(pool[(ci + j + k) % len(pool)]) for k in range(n)], "encoding": "base64"}
                    rid = {"Idempotency-Key": f"c{ci}-r{j}"} if retry or j % 2 else {}
                    r = c.post("/v1/embeddings/images", json=body, headers=rid)
                    codes = [r.status_code]
                    if retry:  # a client retrying the same request: replayed, not billed
                        r2 = c.post("/v1/embeddings/images", json=body, headers=rid)
                        codes.append(r2.status_code)
                        assert r2.content == r.content
                    with lock:
                        statuses.extend(codes)
                    if r.status_code == 200:
                        got_images[ci] += len(r.json()["embeddings"])

        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        billed = 0
        with httpx.Client(base_url=srv.url) as c:
            for n in names:
                billed += c.get("/v1/usage", headers={"X-API-Key": tokens[n]}).json()["image_queries"]
        totals = app.state.service.ledger.totals()

    assert set(statuses) == {200}
    expected = sum(n for plan in plans for n, _ in plan)
    assert sum(got_images) == expected
    assert billed == teacher.images_seen == expected == totals["ledger_images"] == totals["image_queries"]
    assert totals["replays"] == sum(retry for plan in plans for _, retry in plan)


# --------------------------------------------------------------------------- no writes outside the data dir
_AUDIT_BOOT = textwrap.dedent("""
    import os, sys
    WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.truncate", "os.link",
              "os.symlink", "os.chmod", "os.chown", "os.utime", "shutil.copyfile", "shutil.rmtree",
              "shutil.move", "sqlite3.connect", "tempfile.mkstemp", "tempfile.mkdtemp"}
    def report(what, path):
        if isinstance(path, (str, bytes, os.PathLike)):
            os.write(2, ("AUDIT\\t%s\\t%s\\n" % (what, os.fsdecode(path))).encode("utf-8", "replace"))
    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if (mode and any(c in mode for c in "wax+")) or (mode is None and isinstance(flags, int) and flags & WRITE):
                report("open", path)
        elif event in EVENTS:
            for a in args[:2]:
                report(event, a)
    sys.addaudithook(hook)
    sys.path.insert(0, sys.argv[1])
    import conftest  # registers the tiny-test teacher
    from vl2v.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_service_writes_nothing_outside_its_data_dir(tmp_path):
    home, tmp, cwd, data = (tmp_path / n for n in ("home", "tmp", "cwd", "data"))
    for d in (home, tmp, cwd):
        d.mkdir()
    token = add_key(data / "keys.txt", "alice")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp), "XDG_CACHE_HOME": str(home / ".cache"),
           "PYTHONDONTWRITEBYTECODE": "1", "VL2V_HOME": str(home / "vl2v"),
           "PYTHONPATH": os.pathsep.join([str(Path(vl2v.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    boot = tmp_path / "boot.py"
    boot.write_text(_AUDIT_BOOT)
    tests_dir = str(Path(__file__).resolve().parent)
    proc = subprocess.Popen([sys.executable, str(boot), tests_dir, "serve", "--teacher", "tiny-test", "--port", str(port),
                             "--data-dir", str(data), "--log-level", "warning"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until_healthy(url, proc, timeout=60), proc.communicate(timeout=5)
        h = {"Authorization": f"Bearer {token}"}
        good = b64(png_bytes(make_image(0, 0, 0, 200)))
        with httpx.Client(base_url=url, headers=h, timeout=30) as c:
            assert c.post("/v1/embeddings/images", json={"images": [good] * 3}).status_code == 200
            assert c.post("/v1/embeddings/images", json={"images": [good]}, headers={"Idempotency-Key": "../../etc/x"}).status_code == 422
            assert c.post("/v1/embeddings/images", json={"images": [good]}, headers={"Idempotency-Key": "id-1"}).status_code == 200
            assert c.post("/v1/embeddings/images", json={"images": [good]}, headers={"Idempotency-Key": "id-1"}).status_code == 200
            assert c.post("/v1/embeddings/texts", json={"texts": ["a", "b"]}).status_code == 200
            assert c.post("/v1/embeddings/images", json={"images": [b64(b"junk")]}).status_code == 415
            assert c.post("/v1/embeddings/images", json={"images": [b64(_bomb_png(50000, 50000))]}).status_code == 413
            assert c.post("/v1/embeddings/images", content=b"x" * (1 << 20), headers={"Content-Type": "multipart/form-data"}).status_code == 415
            assert c.get("/v1/usage").json()["image_queries"] == 4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    text = err.decode("utf-8", "replace")
    root = str(data.resolve())
    writes = [line.split("\t")[1:] for line in text.splitlines() if line.startswith("AUDIT\t")]
    outside = [(ev, p) for ev, p in writes
               if not os.path.realpath(p).startswith(root + os.sep) and os.path.realpath(p) != root
               and p not in ("/dev/null", ":memory:")]
    assert any(p.endswith("usage.sqlite") for _, p in writes), text[-3000:]
    assert outside == [], outside
    for d in (home, tmp, cwd):
        assert list(d.iterdir()) == [], (d, list(d.iterdir()))
    assert {p.name for p in data.iterdir()} <= {"keys.txt", "usage.sqlite", "usage.sqlite-wal", "usage.sqlite-shm", "torch-cache"}


def test_cli_serve_refuses_to_start_without_keys(tmp_path, capsys):
    from vl2v.cli import main

    assert main(["serve", "--teacher", "tiny-test", "--data-dir", str(tmp_path / "d")]) == 2
    assert "--new-key" in capsys.readouterr().err
    assert main(["serve", "--data-dir", str(tmp_path / "d"), "--new-key", "alice"]) == 0
    out = capsys.readouterr().out
    token = out.strip().splitlines()[-1]
    assert token.startswith("vl2v_") and parse_keys((tmp_path / "d" / "keys.txt").read_text()) == {token_hash(token): "alice"}


# --------------------------------------------------------------------------- schemathesis
def test_schemathesis_finds_no_server_errors(served):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(served["url"] + "/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    headers = auth(served)
    calls = {"n": 0}

    def run(mode: GenerationMode, n: int) -> None:
        @given(case=schema.as_strategy(generation_mode=mode))
        @settings(max_examples=n, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def one(case) -> None:
            # half the cases authenticated, half with whatever (or no) key was generated
            extra = headers if calls["n"] % 2 == 0 else None
            calls["n"] += 1
            response = case.call(base_url=served["url"], headers=extra, timeout=30)
            case.validate_response(response, checks=checks)

        one()

    t0 = time.time()
    run(GenerationMode.POSITIVE, 150)
    run(GenerationMode.NEGATIVE, 150)
    assert calls["n"] >= 200
    assert time.time() - t0 < 120
