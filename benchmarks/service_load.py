"""Load test of the embedding service on loopback: N concurrent clients, a fixed number of requests.

    python benchmarks/service_load.py                       # tiny teacher, 32 clients, 2000 requests
    python benchmarks/service_load.py --teacher conse --requests 300

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


def run_load(args: argparse.Namespace) -> int:
    import httpx

    from vl2v.serving.keys import add_key
    from vl2v.serving.live import wait_until_healthy

    data = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="vl2v-load-"))
    names = [f"client-key-{i}" for i in range(4)]
    tokens = {n: add_key(data / "keys.txt", n) for n in names}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, __file__, "--child", "--teacher", args.teacher, "--port", str(port),
                              "--data-dir", str(data), "--batch", str(args.batch)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_until_healthy(url, child, timeout=180, interval=0.2):
            print("the service did not start", file=sys.stderr)
            return 1
        info = httpx.get(url + "/v1/model", headers={"X-API-Key": tokens[names[0]]}).json()
        size = info["image_size"]
        pool = _png_pool(64, size)
        print(f"service: {info['identity']} (image_size {size}, embed_dim {info['embed_dim']}) on {url}; "
              f"{args.clients} clients, {args.requests} requests, {args.batch} images per image request, "
              f"{args.text_frac:.0%} text requests, {args.retry_frac:.0%} sent twice with the same request id")

        lock = threading.Lock()
        latencies: list[float] = []
        statuses: Counter = Counter()
        received = Counter()  # images / texts the clients got embeddings for (once per logical request)
        errors: list[str] = []
        per_client = [args.requests // args.clients + (i < args.requests % args.clients) for i in range(args.clients)]

        def client(ci: int) -> None:
            rng = np.random.RandomState(1000 + ci)
            key = tokens[names[ci % len(names)]]
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=120) as c:
                for j in range(per_client[ci]):
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
                            with lock:
                                statuses["transport-error"] += 1
                                errors.append(f"{type(exc).__name__}: {exc}")
                            continue
                        dt = time.perf_counter() - t0
                        with lock:
                            latencies.append(dt)
                            statuses[r.status_code] += 1
                            if r.status_code != 200 and len(errors) < 5:
                                errors.append(f"{r.status_code}: {r.text[:200]}")
                        if r.status_code == 200:
                            answers.append(r.json()["embeddings"])
                    if answers:
                        if len(answers) == 2 and answers[0] != answers[1]:
                            with lock:
                                errors.append("a replayed answer differs from the first")
                        with lock:
                            received[field] += len(answers[0])

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        billed = Counter()
        with httpx.Client(base_url=url) as c:
            for n in names:
                u = c.get("/v1/usage", headers={"X-API-Key": tokens[n]}).json()
                billed["images"] += u["image_queries"]
                billed["texts"] += u["text_queries"]
                billed["replays"] += u["replays"]
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(60)
        except subprocess.TimeoutExpired:
            child.kill()
    counts = json.loads((data / COUNTS_FILE).read_text()) if (data / COUNTS_FILE).exists() else {}

    n_http = sum(statuses.values())
    n5xx = sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500)
    print(f"\nHTTP requests       {n_http} in {wall:.2f} s  ({n_http / wall:.0f} req/s, "
          f"{(received['images']) / wall:.0f} images/s embedded and returned)")
    print(f"latency             p50 {1000 * _percentile(latencies, 50):.1f} ms   p99 {1000 * _percentile(latencies, 99):.1f} ms   "
          f"max {1000 * max(latencies, default=float('nan')):.1f} ms")
    print(f"statuses            {dict(sorted(statuses.items(), key=str))}   5xx: {n5xx}")
    print(f"images              received {received['images']}   billed {billed['images']}   "
          f"embedded by the teacher {counts.get('teacher_images', '?')}   ledger {counts.get('ledger', {}).get('ledger_images', '?')}")
    print(f"texts               received {received['texts']}   billed {billed['texts']}   "
          f"embedded by the teacher {counts.get('teacher_texts', '?')}")
    print(f"replays (not billed) {billed['replays']}")
    exact = (received["images"] == billed["images"] == counts.get("teacher_images")
             == counts.get("ledger", {}).get("ledger_images")
             and received["texts"] == billed["texts"] == counts.get("teacher_texts"))
    ok = n5xx == 0 and exact and not errors and set(statuses) == {200}
    print(f"metering exact      {'yes' if exact else 'NO'}")
    for e in errors[:5]:
        print(f"error: {e}")
    print("PASS" if ok else "FAIL")
    if not args.data_dir:
        import shutil

        shutil.rmtree(data, ignore_errors=True)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="tiny", help="tiny (a fast built-in stand-in) or a teacher spec such as conse")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=2000, help="logical requests in all (retries come on top)")
    p.add_argument("--batch", type=int, default=8, help="images (or texts) per request")
    p.add_argument("--text-frac", type=float, default=0.1)
    p.add_argument("--retry-frac", type=float, default=0.1)
    p.add_argument("--data-dir", help="service data dir (default: a temporary one, removed afterwards)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    return run_child(args) if args.child else run_load(args)


if __name__ == "__main__":
    sys.exit(main())
