"""Per-key quotas and rate limits of the embedding service, usage per period, and the remote teacher's answer to them.

The service runs over real HTTP on loopback (uvicorn in a thread) with a fake clock: quota windows and rate
limits move only when a test advances it, so nothing here sleeps for real (the remote teacher's sleep is
patched to advance the same clock). Covers: limits in the keys file (parse, add, change, top up), a quota per
window and its refill, prepaid exhaustion, the rate limit with Retry-After, a batch refused whole (and a failed
request costing nothing), GET /v1/usage and `vl2v serve --usage`, exact metering under 32 concurrent clients
with quotas, the remote teacher waiting out a Retry-After and raising QueryBudgetExceeded (and `vl2v embed`
exiting 3 with the paid-for embeddings stored), and benchmarks/service_load.py in its quick quota mode.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from conftest import TinyTeacher, make_image
from vl2v.serving.keys import (
    KeyLimits,
    KeysFileError,
    Quota,
    RateLimit,
    add_key,
    parse_key_entries,
    parse_limits,
    set_limits,
)
from vl2v.serving.live import LiveServer
from vl2v.serving.service import ServiceConfig, create_app
from vl2v.teachers import create_teacher
from vl2v.teachers import remote as remote_module
from vl2v.teachers.base import QueryBudgetExceeded
from vl2v.teachers.store import TeacherStore

SIZE = 24
HOUR = 3600.0
T0 = 1_000 * 86400.0 + 10 * HOUR + 600  # 10:10 UTC on day 1000: 50 minutes before the hour's window ends
ROOT = Path(__file__).resolve().parents[1]


class Clock:
    """The service's (and, patched in, the remote teacher's) notion of time."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FailingTeacher(TinyTeacher):
    """TinyTeacher that counts what it embeds and fails while ``fail`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.images_seen = 0
        self._count = threading.Lock()

    def embed_images(self, images):
        if self.fail:
            raise RuntimeError("injected teacher failure")
        with self._count:
            self.images_seen += int(images.shape[0])
        return super().embed_images(images)


def _png(i: int = 0) -> str:
    buf = io.BytesIO()
    make_image(i % 6, i % 3, i, SIZE).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


IMG = _png()


@pytest.fixture
def quota_service(tmp_path):
    """Start a service whose keys have the given limits: ``start({"alice": ["images=10/hour"], ...})``."""
    started: list[LiveServer] = []

    def start(limits: dict[str, list[str]], real_time: bool = False, **cfg) -> dict:
        data = tmp_path / "serve"
        tokens = {name: add_key(data / "keys.txt", name, parse_limits(items)) for name, items in limits.items()}
        clock, teacher = Clock(), FailingTeacher()
        app = create_app(teacher, ServiceConfig(data, **{"max_batch_images": 16, **cfg}), name="tiny-test",
                         clock=time.time if real_time else clock)
        srv = LiveServer(app).start()
        started.append(srv)
        client = httpx.Client(base_url=srv.url, timeout=30)
        return {"url": srv.url, "tokens": tokens, "clock": clock, "teacher": teacher, "data": data, "client": client,
                "svc": app.state.service}

    yield start
    for srv in started:
        srv.stop()


def post(s: dict, name: str, n: int = 0, texts: int = 0, rid: str | None = None) -> httpx.Response:
    headers = {"X-API-Key": s["tokens"][name], **({"Idempotency-Key": rid} if rid else {})}
    if texts:
        return s["client"].post("/v1/embeddings/texts", headers=headers, json={"texts": [f"t{i}" for i in range(texts)]})
    return s["client"].post("/v1/embeddings/images", headers=headers, json={"images": [IMG] * n})


def usage(s: dict, name: str) -> dict:
    r = s["client"].get("/v1/usage", headers={"X-API-Key": s["tokens"][name]})
    assert r.status_code == 200, r.text
    return r.json()


def refusal(r: httpx.Response, reason: str, status: int = 429) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["status"] == status and err["code"] == err["reason"] == reason and err["message"], err
    return err


# --------------------------------------------------------------------------- the keys file
def test_limits_in_the_keys_file(tmp_path):
    lim = parse_limits(["images=1000/day", "texts=50/prepaid", "rate=5/s"])
    assert lim == KeyLimits(Quota(1000, "day"), Quota(50, "prepaid"), RateLimit(5.0, "s", 5))
    assert parse_limits(["rate=120/min", "burst=10"]).rate == RateLimit(120.0, "min", 10)
    assert parse_limits(["rate=0.5/second"]).rate == RateLimit(0.5, "s", 1)  # burst: at least 1
    for bad, msg in [(["images=10"], "expected N/minute"), (["images=10/week"], "expected N/minute"),
                     (["rate=5/h"], "R/s or R/min"), (["rate=0/s"], "R > 0"), (["burst=3"], "burst without rate"),
                     (["colour=red"], "bad limit"), (["images=1/day", "images=2/day"], "twice"),
                     (["images=+5/prepaid"], "adds to a prepaid limit")]:
        with pytest.raises(KeysFileError, match=msg):
            parse_limits(bad)
    f = tmp_path / "keys.txt"
    add_key(f, "alice", lim)
    add_key(f, "bob")
    f.write_text("# the operator's note\n" + f.read_text().replace("\nbob", "  # alice's team\nbob"))
    entries = {e.name: e.limits for e in parse_key_entries(f.read_text())}
    assert entries == {"alice": lim, "bob": KeyLimits()}
    # change some limits, keep the rest, the comments and the file's mode
    assert set_limits(f, "alice", ["images=2000/hour", "rate=none"]) == KeyLimits(Quota(2000, "hour"), Quota(50, "prepaid"))
    assert set_limits(f, "alice", ["texts=+25"]).texts == Quota(75, "prepaid")  # top up the prepaid balance
    assert set_limits(f, "bob", ["rate=2/s", "burst=4"]).rate == RateLimit(2.0, "s", 4)
    text = f.read_text()
    assert text.startswith("# the operator's note\n") and "# alice's team" in text
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert {e.name: e.limits for e in parse_key_entries(text)} == {
        "alice": KeyLimits(Quota(2000, "hour"), Quota(75, "prepaid")), "bob": KeyLimits(rate=RateLimit(2.0, "s", 4))}
    with pytest.raises(KeysFileError, match="no key named"):
        set_limits(f, "carol", ["images=1/day"])


# --------------------------------------------------------------------------- quotas
def test_quota_per_window_refuses_whole_batches_and_refills(quota_service):
    s = quota_service({"alice": ["images=10/hour"], "bob": []})
    assert post(s, "alice", 4).status_code == 200 and post(s, "alice", 4).status_code == 200
    r = post(s, "alice", 4)  # 8 + 4 > 10: refused whole, nothing computed or billed
    err = refusal(r, "quota_exceeded")
    assert (err["kind"], err["limit"], err["used"], err["requested"], err["period"]) == ("image", 10, 8, 4, "hour")
    assert err["retry_after"] == 50 * 60 and r.headers["retry-after"] == "3000"  # until the hour's window ends
    assert err["resets_at"].endswith("T11:00:00+00:00")
    assert s["teacher"].images_seen == 8 and usage(s, "alice")["image_queries"] == 8
    assert post(s, "alice", 2).status_code == 200  # exactly fills the quota
    refusal(post(s, "alice", 1), "quota_exceeded")
    assert post(s, "alice", texts=3).status_code == 200  # no text quota
    assert post(s, "bob", 16).status_code == 200  # other keys are not affected
    err = refusal(post(s, "alice", 11), "batch_over_quota", status=413)  # can never fit: not a 429 to wait out
    assert err["limit"] == 10 and "smaller batches" in err["message"]
    s["clock"].advance(50 * 60 - 1)
    r = post(s, "alice", 1)
    assert refusal(r, "quota_exceeded")["retry_after"] == 1 and r.headers["retry-after"] == "1"
    s["clock"].advance(1)  # the next window: refilled
    assert post(s, "alice", 8).status_code == 200
    u = usage(s, "alice")
    hour, total = u["periods"]
    assert (hour["period"], hour["image_queries"], hour["image_quota"], hour["image_remaining"]) == ("hour", 8, 10, 2)
    assert hour["window_start"].endswith("T11:00:00+00:00")
    assert (total["period"], total["image_queries"], total["text_queries"]) == ("total", 18, 3)
    assert s["teacher"].images_seen == 18 + 16


def test_window_usage_survives_a_restart(quota_service, tmp_path):
    s = quota_service({"alice": ["images=10/day"]})
    assert post(s, "alice", 6).status_code == 200
    # a second service on the same data directory counts the day's usage from the ledger
    app = create_app(TinyTeacher(), ServiceConfig(s["data"], max_batch_images=16), clock=Clock(T0 + HOUR))
    with LiveServer(app) as srv, httpx.Client(base_url=srv.url) as c:
        h = {"X-API-Key": s["tokens"]["alice"]}
        err = refusal(c.post("/v1/embeddings/images", headers=h, json={"images": [IMG] * 5}), "quota_exceeded")
        assert err["used"] == 6
        assert c.post("/v1/embeddings/images", headers=h, json={"images": [IMG] * 4}).status_code == 200


def test_prepaid_balance_runs_out_and_is_topped_up(quota_service):
    s = quota_service({"alice": ["texts=5/prepaid"]})
    assert post(s, "alice", texts=3).status_code == 200
    r = post(s, "alice", texts=3)
    err = refusal(r, "prepaid_exhausted")
    assert "retry-after" not in r.headers and "retry_after" not in err  # waiting does not help
    assert (err["kind"], err["limit"], err["used"], err["requested"], err["period"]) == ("text", 5, 3, 3, "prepaid")
    assert "2 left" in err["message"]
    assert post(s, "alice", texts=2).status_code == 200
    s["clock"].advance(30 * 86400)  # a balance does not refill
    refusal(post(s, "alice", texts=1), "prepaid_exhausted")
    assert post(s, "alice", 4).status_code == 200  # images are not limited
    set_limits(s["data"] / "keys.txt", "alice", ["texts=+4"])
    s["svc"].keys.refresh()  # a running service re-reads the file within a second; now, for the test
    assert post(s, "alice", texts=4).status_code == 200
    refusal(post(s, "alice", texts=1), "prepaid_exhausted")
    total = usage(s, "alice")["periods"][-1]
    assert (total["text_queries"], total["text_quota"], total["text_remaining"]) == (9, 9, 0)


def test_rate_limit_answers_429_with_retry_after(quota_service):
    s = quota_service({"alice": ["rate=2/s", "burst=3"], "bob": ["rate=60/min", "burst=1"]})
    assert [post(s, "alice", 1).status_code for _ in range(3)] == [200] * 3  # the burst
    r = post(s, "alice", 1)
    err = refusal(r, "rate_limited")
    assert (err["kind"], err["limit"], err["period"], err["burst"]) == ("requests", 2, "second", 3)
    assert err["retry_after"] == 0.5 and r.headers["retry-after"] == "1"  # the header is whole seconds, rounded up
    s["clock"].advance(0.5)
    assert post(s, "alice", 1).status_code == 200
    refusal(post(s, "alice", 1), "rate_limited")
    assert usage(s, "alice")["image_queries"] == 4  # GET /v1/usage is not rate-limited, refusals are not billed
    # per minute: one request, then one a second
    assert post(s, "bob", 1, rid="b-1").status_code == 200
    err = refusal(post(s, "bob", 1), "rate_limited")
    assert (err["period"], err["retry_after"]) == ("minute", 1.0)
    r = post(s, "bob", 1, rid="b-1")  # a retry answered from the stored answer is neither limited nor billed
    assert r.status_code == 200 and r.headers["idempotent-replayed"] == "true"
    s["clock"].advance(1)
    assert post(s, "bob", 1).status_code == 200


def test_a_failed_request_costs_no_quota(quota_service):
    s = quota_service({"alice": ["images=8/day"]})
    s["teacher"].fail = True
    try:
        r = post(s, "alice", 8, rid="x-1")
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    except httpx.TransportError:
        pass  # uvicorn closes the connection after an unhandled error: the client may see a reset instead
    s["teacher"].fail = False
    s["client"] = httpx.Client(base_url=s["url"], timeout=30)  # not the connection the server closed
    assert post(s, "alice", 8, rid="x-1").status_code == 200  # the retry fits: the failure was not counted
    assert post(s, "alice", 8, rid="x-1").headers["idempotent-replayed"] == "true"  # a replay passes a full quota
    refusal(post(s, "alice", 1), "quota_exceeded")
    u = usage(s, "alice")
    assert (u["image_queries"], u["requests"], u["replays"]) == (8, 1, 1)


# --------------------------------------------------------------------------- usage: API and CLI
def test_usage_endpoint_reports_limits_and_periods(quota_service):
    s = quota_service({"alice": ["images=10/hour", "texts=100/prepaid", "rate=5/s"], "bob": []})
    post(s, "alice", 3)
    post(s, "alice", texts=7)
    u = usage(s, "alice")
    assert u["limits"] == {"images": "10/hour", "texts": "100/prepaid", "rate": "5/s", "burst": 5}
    assert [p["period"] for p in u["periods"]] == ["hour", "total"]
    hour, total = u["periods"]
    assert hour == {"period": "hour", "window_start": "1972-09-27T10:00:00+00:00",
                    "resets_at": "1972-09-27T11:00:00+00:00", "image_queries": 3, "text_queries": 7,
                    "image_quota": 10, "image_remaining": 7, "text_quota": None, "text_remaining": None}
    assert (total["text_quota"], total["text_remaining"], total["image_quota"]) == (100, 93, None)
    b = usage(s, "bob")  # no limits: only the all-time row
    assert b["limits"] == {"images": None, "texts": None, "rate": None, "burst": None}
    assert [p["period"] for p in b["periods"]] == ["total"] and b["periods"][0]["image_remaining"] is None


def test_usage_cli(quota_service, capsys):
    from vl2v.cli import main

    # `vl2v serve --usage` reads the current windows by the real clock (a UTC day: this runs well within one)
    s = quota_service({"alice": ["images=10/day"], "bob": []}, real_time=True)
    post(s, "alice", 4)
    post(s, "bob", 2)
    post(s, "bob", texts=5)
    data = str(s["data"])
    assert main(["serve", "--data-dir", data, "--new-key", "carol", "--limits", "texts=50/prepaid", "rate=1/s"]) == 0
    assert "limits texts=50/prepaid rate=1/s burst=1" in capsys.readouterr().out
    assert main(["serve", "--data-dir", data, "--set-limits", "bob", "--limits", "images=100/hour"]) == 0
    assert "images=100/hour" in capsys.readouterr().out
    assert main(["serve", "--data-dir", data, "--usage", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    by_key = {k["key"]: k for k in out["keys"]}
    assert set(by_key) == {"alice", "bob", "carol"} and all(k["in_keys_file"] for k in out["keys"])
    alice_day = by_key["alice"]["periods"][0]
    assert (alice_day["period"], alice_day["image_queries"], alice_day["image_quota"],
            alice_day["image_remaining"]) == ("day", 4, 10, 6)
    assert by_key["bob"]["limits"]["images"] == "100/hour" and by_key["bob"]["text_queries"] == 5
    assert by_key["carol"]["periods"][-1]["text_remaining"] == 50
    assert main(["serve", "--data-dir", data, "--usage"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["key", "period", "window"]
    alice = next(line for line in lines if line.startswith("alice"))
    assert alice.split()[:2] == ["alice", "day"] and "4 10 6" in " ".join(alice.split()) and "images=10/day" in alice
    # mistakes are one-line errors, exit 2
    for argv, msg in [(["--set-limits", "bob"], "needs --limits"), (["--limits", "images=1/day"], "goes with"),
                      (["--new-key", "dave", "--limits", "images=lots"], "expected N/minute"),
                      (["--json"], "goes with --usage"), (["--usage", "--new-key", "x"], "one of")]:
        assert main(["serve", "--data-dir", data, *argv]) == 2, argv
        assert msg in capsys.readouterr().err, argv


# --------------------------------------------------------------------------- concurrency
def test_metering_exact_under_32_concurrent_clients_with_quotas(quota_service):
    s = quota_service({"capped": ["images=100/day"], "free": [], "prepaid": ["images=60/prepaid"]})
    names = ["capped", "free", "prepaid"]
    rng = np.random.RandomState(0)
    # capped and prepaid send batches of 4 (so their quotas fill exactly); free sends 1 to 8
    plans = [[(4 if ci % 3 != 1 else int(rng.randint(1, 9)), bool(rng.rand() < 0.3)) for _ in range(6)]
             for ci in range(32)]
    served = {n: 0 for n in names}
    sent = {n: 0 for n in names}
    codes: dict[str, list[int]] = {n: [] for n in names}
    lock = threading.Lock()

    def client(ci: int) -> None:
        name = names[ci % 3]
        with httpx.Client(base_url=s["url"], timeout=60, headers={"X-API-Key": s["tokens"][name]}) as c:
            for j, (n, twice) in enumerate(plans[ci]):
                rid = {"Idempotency-Key": f"c{ci}-{j}"} if twice else {}
                answers = [c.post("/v1/embeddings/images", json={"images": [IMG] * n}, headers=rid)
                           for _ in range(2 if twice else 1)]
                with lock:
                    sent[name] += n
                    codes[name] += [r.status_code for r in answers]
                    if any(r.status_code == 200 for r in answers):
                        served[name] += n

    threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    billed = {n: usage(s, n)["image_queries"] for n in names}
    totals = s["svc"].ledger.totals()
    assert set(codes["free"]) == {200} and served["free"] == sent["free"] == billed["free"]
    assert set(codes["capped"]) == {200, 429} and served["capped"] == billed["capped"] == 100
    assert set(codes["prepaid"]) == {200, 429} and served["prepaid"] == billed["prepaid"] == 60
    assert sum(billed.values()) == s["teacher"].images_seen == totals["ledger_images"] == totals["image_queries"]
    assert not s["svc"].ledger._reserved or not any(s["svc"].ledger._reserved.values())  # nothing left reserved


# --------------------------------------------------------------------------- the remote teacher
def _quantised(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g).float().div(255)


@pytest.fixture
def sleeps(monkeypatch):
    """The remote teacher's waits, recorded; each advances the service's fake clock (set ``sleeps.clock``)."""
    class Sleeps(list):
        clock: Clock | None = None

    out = Sleeps()

    def fake(seconds: float) -> None:
        out.append(seconds)
        if out.clock is not None:
            out.clock.advance(seconds)

    monkeypatch.setattr(remote_module, "_sleep", fake)
    return out


def _remote(s: dict, name: str, **opts):
    return create_teacher(f"remote:{s['url']}", api_key=s["tokens"][name], batch_size=8, backoff=0.01,
                          max_backoff=0.05, **opts)


def test_remote_teacher_waits_out_retry_after(quota_service, sleeps):
    s = quota_service({"rated": ["rate=1/s", "burst=1"], "windowed": ["images=8/minute"]})
    sleeps.clock = s["clock"]
    t = _remote(s, "rated")
    x = _quantised(16)
    assert torch.allclose(t.embed_images(x), TinyTeacher().embed_images(x), atol=1e-6)  # 2 requests, 1 a second
    assert sleeps == [1.0] and t.retried == 1 and t.image_queries == 16
    s["clock"].t = T0 + 30  # half way through a minute window
    sleeps.clear()
    t2 = _remote(s, "windowed", max_wait=60)
    assert t2.embed_images(_quantised(16, seed=1)).shape == (16, 16)  # 8 now, 8 after the window resets
    assert sleeps == [30.0] and t2.retried == 1
    assert usage(s, "windowed")["image_queries"] == 16


def test_remote_teacher_stops_on_a_refusal_that_will_not_clear(quota_service, sleeps, tmp_path):
    s = quota_service({"daily": ["images=12/day"], "prepaid": ["images=10/prepaid"]})
    sleeps.clock = s["clock"]
    t = _remote(s, "daily", max_wait=60)
    store = TeacherStore(t, path=tmp_path / "store.sqlite")
    keys = [(f"img{i:03d}", None) for i in range(24)]
    x = _quantised(24)
    with pytest.raises(QueryBudgetExceeded) as info:
        store.image_embeddings(keys, lambda i: x[i], batch_size=8)
    msg = str(info.value)
    assert "\n" not in msg and "quota_exceeded" in msg and "max_wait=60" in msg and "teacher store" in msg
    assert sleeps == [] and t.image_queries == 8  # the 8 paid for are in the store
    assert store.counts()["images"] == 8
    store.close()
    t2 = _remote(s, "prepaid")
    assert t2.embed_images(_quantised(8)).shape == (8, 16)
    with pytest.raises(QueryBudgetExceeded, match=r"prepaid_exhausted: prepaid image queries exhausted: 8 of 10 used "
                                                  r"\(2 left\).*teacher store"):
        t2.embed_images(_quantised(8, seed=2))
    assert sleeps == [] and t2.image_queries == 8


def test_remote_teacher_honours_a_bare_429(tmp_path, sleeps):
    """A 429 from something in front of the service (no reason in the body): Retry-After is waited out."""
    data = tmp_path / "serve"
    token = add_key(data / "keys.txt", "alice")
    inner = create_app(TinyTeacher(), ServiceConfig(data), name="tiny-test")
    refused = {"n": 0}

    async def proxy(scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and refused["n"] < 1:
            refused["n"] += 1
            await send({"type": "http.response.start", "status": 429, "headers": [(b"retry-after", b"7")]})
            await send({"type": "http.response.body", "body": b"slow down"})
            return
        await inner(scope, receive, send)

    with LiveServer(proxy) as srv:
        t = create_teacher(f"remote:{srv.url}", api_key=token, backoff=0.01)
        assert t.embed_texts(["a", "b"]).shape == (2, 16)
        assert sleeps == [7.0]
        refused["n"] = 0
        t = create_teacher(f"remote:{srv.url}", api_key=token, backoff=0.01, max_wait=5)
        with pytest.raises(QueryBudgetExceeded, match="too_many_requests.*more than max_wait=5"):
            t.embed_texts(["a"])


# --------------------------------------------------------------------------- the load benchmark
def test_load_benchmark_quick_quota_mode(tmp_path):
    out = tmp_path / "load.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "service_load.py"), "--quick", "--json-out", str(out)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert "PASS" in p.stdout and "p50" in p.stdout and "p99" in p.stdout
    r = json.loads(out.read_text())
    assert r["clients"] == 32 and len(r["keys"]) == 3 and r["status_5xx"] == 0
    capped = [k for k in r["keys"].values() if k["quota"] is not None]
    assert len(capped) == 1
    c = capped[0]
    assert c["served_images"] == c["billed_images"] == c["quota"] and c["refused"] > 0
    assert c["refused"] == c["status"].get("429", 0) and set(c["status"]) == {"200", "429"}
    assert set(c["reasons"]) == {"quota_exceeded"}
    for k in r["keys"].values():
        if k["quota"] is None:
            assert set(k["status"]) == {"200"} and k["served_images"] == k["sent_images"] == k["billed_images"]
            assert k["served_texts"] == k["sent_texts"] == k["billed_texts"]
    assert r["teacher_images"] == sum(k["billed_images"] for k in r["keys"].values()) == r["ledger_images"]
    assert math.isfinite(r["latency_ms"]["p50"]) and math.isfinite(r["latency_ms"]["p99"])


def test_cli_exits_3_on_prepaid_exhaustion_and_keeps_what_was_paid_for(quota_service, image_folder, tmp_path, capsys):
    """`vl2v embed` with a remote teacher: the refusal stops the run (exit 3), the paid-for embeddings are stored,
    and after a top-up the same command pays only for the rest."""
    from vl2v.cli import main

    s = quota_service({"alice": ["images=20/prepaid"]})
    store = tmp_path / "store.sqlite"
    argv = ["embed", "--data", str(image_folder), "--teacher", f"remote:{s['url']}", "--teacher-opt",
            f"api_key={s['tokens']['alice']}", "batch_size=8", "--batch-size", "8", "--store", str(store)]
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "teacher query budget exhausted" in err and "prepaid_exhausted" in err
    assert usage(s, "alice")["image_queries"] == 16  # two batches of 8 fit in 20, the third was refused whole
    set_limits(s["data"] / "keys.txt", "alice", ["images=+88"])  # exactly the rest: 54 images x 2 views = 108 in all
    s["svc"].keys.refresh()
    assert main(argv) == 0
    assert "108 views: 92 teacher queries, 16 already stored" in capsys.readouterr().out
    assert usage(s, "alice")["image_queries"] == 108
