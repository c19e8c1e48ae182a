"""Load test of the embedding service on loopback: N concurrent clients, a fixed number of requests.

    python benchmarks/service_load.py                       # tiny teacher, 32 clients, 2000 requests
    python benchmarks/service_load.py --teacher conse --requests 300
    python benchmarks/service_load.py --quota 2000          # 3 keys, one limited to 2000 images a day
    python benchmarks/service_load.py --quick               # the quota mode, small (the test suite runs it)

The service runs in a child process (``vl2v.serving.service.create_app`` on
uvicorn, one process, exactly what ``vl2v serve`` runs) with a teacher wrapped
to count every image and text it embeds. The clients (threads, one HTTP
connection each, 4 API keys between them) send image batches (and some text
batches); a fraction of the requests is sent twice with the same
``Idempotency-Key``, as a retrying client would. Printed: throughput, p50/p99
latency, status counts (5xx must be 0), and the metering check: the sum of
billed image queries over the keys must equal both the images the clients
received embeddings for and the images the teacher embedded; likewise texts.
Exit status 1 if any check fails. Traffic goes to 127.0.0.1 only.

With ``--quota N`` the clients share 3 keys instead, the first limited to N
image queries a day (``images=N/day`` in the keys file; N a multiple of
``--batch``), which its clients exceed. Then also checked, per key: that key is
served exactly N images and every other image request of it is refused with
429 ``quota_exceeded``; the other keys are served everything they sent, and
billed exactly that. ``--json-out FILE`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

COUNTS_FILE = "bench_counts.json"


# --------------------------------------------------------------------------- the server (child process)
def _bench_teacher(kind: str):
    import torch
    import torch.nn.functional as F

    from vl2v.teachers.base import Teacher
    from vl2v.teachers.registry import create_teacher

    if kind == "tiny":
        class TinyBench(Teacher):
            """A fixed random projection of a 8x8 thumbnail: fast, deterministic (the server's cost is then HTTP)."""

            backend = "tiny-bench"

            def __init__(self) -> None:
                g = torch.Generator().manual_seed(0)
                self.w = torch.randn(3 * 8 * 8, 64, generator=g)

            embed_dim = property(lambda self: 64)
            image_size = property(lambda self: 64)

            def identity(self) -> str:
                return "tiny-bench(dim=64,size=64)"

            def embed_images(self, images):
                x = F.adaptive_avg_pool2d(images, 8).flatten(1)
                return F.normalize(x @ self.w, dim=-1)

            def embed_texts(self, texts):
                out = [torch.randn(64, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts]
                return F.normalize(torch.stack(out), dim=-1)

        inner = TinyBench()
    else:
        inner = create_teacher(kind)

    class Counting(Teacher):
        def __init__(self, t) -> None:
            self.t, self.images, self.texts, self.lock = t, 0, 0, threading.Lock()
            self.backend = t.backend

        embed_dim = property(lambda self: self.t.embed_dim)
        image_size = property(lambda self: self.t.image_size)

        def identity(self) -> str:
            return self.t.identity()

        def embed_images(self, images):
            with self.lock:
                self.images += int(images.shape[0])
            return self.t.embed_images(images)

        def embed_texts(self, texts):
            with self.lock:
                self.texts += len(texts)
            return self.t.embed_texts(texts)

    return Counting(inner)


def run_child(args: argparse.Namespace) -> int:
    from vl2v.serving import confine_writes

    confine_writes(args.data_dir)
    import uvicorn

    from vl2v.serving.service import ServiceConfig, create_app

    teacher = _bench_teacher(args.teacher)
    app = create_app(teacher, ServiceConfig(Path(args.data_dir), max_batch_images=max(64, args.batch)), name=args.teacher)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off",
                                           server_header=False, limit_concurrency=256, timeout_keep_alive=30))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down on
        pass
    svc = app.state.service
    (Path(args.data_dir) / COUNTS_FILE).write_text(json.dumps({
        "teacher_images": teacher.images, "teacher_texts": teacher.texts,
        "service_images": svc.images_embedded, "service_texts": svc.texts_embedded,
        "ledger": svc.ledger.totals()}))
    return 0


# --------------------------------------------------------------------------- the clients (parent process)
def _png_pool(n: int, size: int, seed: int = 0) -> list[str]:
    from PIL import Image

    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        arr = np.full((size, size, 3), rng.randint(0, 256, 3), dtype=np.uint8)
        lo, hi = sorted(rng.randint(0, size, 2))
        arr[lo:hi + 1, lo:hi + 1] = rng.randint(0, 256, 3)
        arr = np.clip(arr.astype(np.int16) + rng.randint(-8, 9, arr.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out


def _percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


class Tally:
    """What the clients sent and got back, per key (thread-safe)."""

    def __init__(self, names: list[str]) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.ok_latencies: list[float] = []
        self.errors: list[str] = []
        self.keys = {n: {"sent": Counter(), "served": Counter(), "status": Counter(), "reasons": Counter()}
                     for n in names}

    def response(self, name: str, r: Any, dt: float) -> None:
        with self.lock:
            k = self.keys[name]
            self.latencies.append(dt)
            k["status"][r.status_code] += 1
            if r.status_code == 200:
                self.ok_latencies.append(dt)
            elif r.status_code == 429:
                try:
                    k["reasons"][r.json()["error"]["reason"]] += 1
                except Exception:
                    k["reasons"]["?"] += 1
            elif len(self.errors) < 5:
                self.errors.append(f"{name}: {r.status_code}: {r.text[:200]}")

    def error(self, name: str, what: str) -> None:
        with self.lock:
            self.keys[name]["status"]["transport-error"] += 1
            self.errors.append(what)


def _client(ci: int, args: argparse.Namespace, url: str, name: str, token: str, pool: list[str], n_requests: int,
            tally: Tally) -> None:
    import httpx

    rng = np.random.RandomState(1000 + ci)
    with httpx.Client(base_url=url, headers={"X-API-Key": token}, timeout=120) as c:
        for j in range(n_requests):
            if rng.rand() < args.text_frac:
                path, field = "/v1/embeddings/texts", "texts"
                items = [f"a photo of a thing number {rng.randint(10 ** 6)}" for _ in range(args.batch)]
            else:
                path, field = "/v1/embeddings/images", "images"
                items = [pool[k] for k in rng.randint(0, len(pool), args.batch)]
            body = {field: items, "encoding": "base64"}
            twice = rng.rand() < args.retry_frac
            headers = {"Idempotency-Key": f"c{ci}-{j}"} if twice or j % 2 == 0 else {}
            answers = []
            for _ in range(2 if twice else 1):
                t0 = time.perf_counter()
                try:
                    r = c.post(path, json=body, headers=headers)
                except httpx.HTTPError as exc:
                    tally.error(name, f"{type(exc).__name__}: {exc}")
                    continue
                tally.response(name, r, time.perf_counter() - t0)
                if r.status_code == 200:
                    answers.append(r.json()["embeddings"])
            with tally.lock:
                tally.keys[name]["sent"][field] += len(items)
                if len(answers) == 2 and answers[0] != answers[1]:
                    tally.errors.append("a replayed answer differs from the first")
                if answers:
                    tally.keys[name]["served"][field] += len(answers[0])


def _start_service(args: argparse.Namespace, data: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, __file__, "--child", "--teacher", args.teacher, "--port", str(port),
                              "--data-dir", str(data), "--batch", str(args.batch)], env=env)
    return child, f"http://127.0.0.1:{port}"


def _stop_service(child: subprocess.Popen) -> None:
    child.send_signal(signal.SIGINT)
    try:
        child.wait(60)
    except subprocess.TimeoutExpired:
        child.kill()


def run_load(args: argparse.Namespace) -> int:
    import httpx

    from vl2v.serving.keys import add_key, parse_limits
    from vl2v.serving.live import wait_until_healthy

    data = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="vl2v-load-"))
    names = [f"client-key-{i}" for i in range(3 if args.quota else 4)]
    quotas = {n: (args.quota if args.quota and i == 0 else None) for i, n in enumerate(names)}
    tokens = {n: add_key(data / "keys.txt", n, parse_limits([f"images={q}/day"] if q else [])) for n, q in quotas.items()}
    child, url = _start_service(args, data)
    try:
        if not wait_until_healthy(url, child, timeout=180, interval=0.2):
            print("the service did not start", file=sys.stderr)
            return 1
        info = httpx.get(url + "/v1/model", headers={"X-API-Key": tokens[names[0]]}).json()
        pool = _png_pool(64, info["image_size"])
        print(f"service: {info['identity']} (image_size {info['image_size']}, embed_dim {info['embed_dim']}) on {url}; "
              f"{args.clients} clients over {len(names)} keys, {args.requests} requests, {args.batch} images per image "
              f"request, {args.text_frac:.0%} text requests, {args.retry_frac:.0%} sent twice with the same request id"
              + (f"; {names[0]} limited to {args.quota} images a day" if args.quota else ""))
        tally = Tally(names)
        per_client = [args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)]
        t0 = time.perf_counter()
        threads = [threading.Thread(target=_client, args=(i, args, url, names[i % len(names)], tokens[names[i % len(names)]],
                                                          pool, per_client[i], tally)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.max_seconds)
        wall = time.perf_counter() - t0
        if any(t.is_alive() for t in threads):
            tally.errors.append(f"clients still running after {args.max_seconds} s")
        with httpx.Client(base_url=url) as c:
            billed = {n: c.get("/v1/usage", headers={"X-API-Key": tokens[n]}).json() for n in names}
    finally:
        _stop_service(child)
    counts = json.loads((data / COUNTS_FILE).read_text()) if (data / COUNTS_FILE).exists() else {}
    ok = _report(args, tally, billed, counts, quotas, wall)
    if not args.data_dir:
        import shutil

        shutil.rmtree(data, ignore_errors=True)
    return 0 if ok else 1


def _key_results(tally: Tally, billed: dict[str, dict], quotas: dict[str, int | None]) -> dict[str, dict]:
    out = {}
    for n, k in tally.keys.items():
        out[n] = {"quota": quotas[n], "sent_images": k["sent"]["images"], "sent_texts": k["sent"]["texts"],
                  "served_images": k["served"]["images"], "served_texts": k["served"]["texts"],
                  "billed_images": billed[n]["image_queries"], "billed_texts": billed[n]["text_queries"],
                  "replays": billed[n]["replays"], "status": {str(s): v for s, v in sorted(k["status"].items(), key=str)},
                  "refused": k["status"][429], "reasons": dict(k["reasons"])}
    return out


def _key_ok(r: dict) -> bool:
    """A key's metering is exact: served == billed; everything sent is served, or (quota) exactly the quota is
    and every other answer is a 429 quota_exceeded."""
    texts_ok = r["served_texts"] == r["sent_texts"] == r["billed_texts"]
    if r["quota"] is None:
        return texts_ok and r["served_images"] == r["sent_images"] == r["billed_images"] and set(r["status"]) == {"200"}
    return (texts_ok and r["served_images"] == r["billed_images"] == r["quota"] and r["refused"] > 0
            and set(r["status"]) == {"200", "429"} and set(r["reasons"]) == {"quota_exceeded"})


def _report(args: argparse.Namespace, tally: Tally, billed: dict[str, dict], counts: dict,
            quotas: dict[str, int | None], wall: float) -> bool:
    keys = _key_results(tally, billed, quotas)
    statuses = Counter()
    for k in tally.keys.values():
        statuses.update(k["status"])
    n_http = sum(statuses.values())
    n5xx = sum(v for s, v in statuses.items() if isinstance(s, int) and s >= 500)
    received = {f: sum(k[f"served_{f}"] for k in keys.values()) for f in ("images", "texts")}
    total = {f: sum(k[f"billed_{f}"] for k in keys.values()) for f in ("images", "texts")}
    lat = {q: 1000 * _percentile(tally.latencies, q) for q in (50, 99)}
    print(f"\nHTTP requests       {n_http} in {wall:.2f} s  ({n_http / wall:.0f} req/s, "
          f"{received['images'] / wall:.0f} images/s embedded and returned)")
    print(f"latency             p50 {lat[50]:.1f} ms   p99 {lat[99]:.1f} ms   "
          f"max {1000 * max(tally.latencies, default=float('nan')):.1f} ms   (200 only: p50 "
          f"{1000 * _percentile(tally.ok_latencies, 50):.1f} ms, p99 {1000 * _percentile(tally.ok_latencies, 99):.1f} ms)")
    print(f"statuses            {dict(sorted(statuses.items(), key=str))}   5xx: {n5xx}")
    print(f"images              received {received['images']}   billed {total['images']}   "
          f"embedded by the teacher {counts.get('teacher_images', '?')}   ledger {counts.get('ledger', {}).get('ledger_images', '?')}")
    print(f"texts               received {received['texts']}   billed {total['texts']}   "
          f"embedded by the teacher {counts.get('teacher_texts', '?')}")
    print(f"replays (not billed) {sum(k['replays'] for k in keys.values())}")
    if args.quota:
        print(f"\n{'key':<14}{'quota':>7}{'images sent':>13}{'served':>8}{'billed':>8}{'texts sent':>12}"
              f"{'served':>8}{'billed':>8}  statuses")
        for n, k in keys.items():
            print(f"{n:<14}{k['quota'] if k['quota'] is not None else '-':>7}{k['sent_images']:>13}{k['served_images']:>8}"
                  f"{k['billed_images']:>8}{k['sent_texts']:>12}{k['served_texts']:>8}{k['billed_texts']:>8}  "
                  f"{k['status']} {k['reasons'] or ''}")
    exact = (received["images"] == total["images"] == counts.get("teacher_images")
             == counts.get("ledger", {}).get("ledger_images")
             and received["texts"] == total["texts"] == counts.get("teacher_texts"))
    per_key = all(_key_ok(k) for k in keys.values())
    ok = n5xx == 0 and exact and per_key and not tally.errors
    print(f"metering exact      {'yes' if exact else 'NO'}" + (f"   per key {'yes' if per_key else 'NO'}"
                                                               if args.quota else ""))
    for e in tally.errors[:5]:
        print(f"error: {e}")
    print("PASS" if ok else "FAIL")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({
            "ok": ok, "clients": args.clients, "requests": args.requests, "wall_s": wall, "status_5xx": n5xx,
            "statuses": {str(s): v for s, v in statuses.items()}, "keys": keys,
            "teacher_images": counts.get("teacher_images"), "teacher_texts": counts.get("teacher_texts"),
            "ledger_images": counts.get("ledger", {}).get("ledger_images"),
            "latency_ms": {"p50": lat[50], "p99": lat[99]}, "errors": tally.errors}, indent=2))
    return ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="tiny", help="tiny (a fast built-in stand-in) or a teacher spec such as conse")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=2000, help="logical requests in all (retries come on top)")
    p.add_argument("--batch", type=int, default=8, help="images (or texts) per request")
    p.add_argument("--text-frac", type=float, default=0.1)
    p.add_argument("--retry-frac", type=float, default=0.1)
    p.add_argument("--quota", type=int, help="3 keys, the first limited to QUOTA images a day (a multiple of --batch)")
    p.add_argument("--quick", action="store_true", help="the quota mode, small: 32 clients, 192 requests of 4, quota 48")
    p.add_argument("--max-seconds", type=float, default=600.0, help="stop waiting for the clients after this long")
    p.add_argument("--json-out", help="also write the numbers to this JSON file")
    p.add_argument("--data-dir", help="service data dir (default: a temporary one, removed afterwards)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return run_child(args)
    if args.quick:
        args.clients, args.requests, args.batch = 32, 192, 4
        args.quota = args.quota or 48
        args.max_seconds = min(args.max_seconds, 240.0)
    if args.quota is not None and (args.quota < 1 or args.quota % args.batch):
        p.error(f"--quota must be a positive multiple of --batch ({args.batch}), so that whole batches fill it")
    return run_load(args)


if __name__ == "__main__":
    sys.exit(main())
