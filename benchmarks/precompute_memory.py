"""Peak memory of streaming teacher-embedding precomputation as the dataset grows.

Builds synthetic ROOT/domain/class/image folders of N, 4N and 16N images and,
for each, measures in a fresh process the peak resident memory of
(a) ``vl2v embed`` (streaming, one shard in memory) and
(b) the in-memory baseline: decoding the whole dataset as training does
(``load_domain_data``). Prints both and their ratio to the 1x size.

    python benchmarks/precompute_memory.py [--base 300] [--teacher conse --teacher-opt classifier=efficientnet_lite0]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_folder(root: Path, n: int, size: int = 224) -> Path:
    rng = np.random.RandomState(0)
    domains, classes = ["a", "b", "c"], ["x", "y", "z", "w"]
    for i in range(n):
        d, c = domains[i % 3], classes[(i // 3) % 4]
        folder = root / d / c
        folder.mkdir(parents=True, exist_ok=True)
        arr = (rng.rand(size // 8, size // 8, 3) * 255).astype(np.uint8)  # blocky noise: realistic PNG sizes
        Image.fromarray(arr).resize((size, size), Image.NEAREST).save(folder / f"{i:06d}.png")
    return root


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "VL2V_PROGRESS": "0"})
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss / 1024.0, time.time() - t0  # ru_maxrss is in KiB on Linux


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=int, default=300, help="images at 1x (default 300)")
    ap.add_argument("--factors", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--teacher", default="conse")
    ap.add_argument("--teacher-opt", nargs="*", default=["classifier=efficientnet_lite0"])
    ap.add_argument("--shard-size", type=int, default=128)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for f in args.factors:
            n = args.base * f
            folder = make_folder(Path(tmp) / f"x{f}", n)
            store = Path(tmp) / f"store{f}.sqlite"
            embed = [sys.executable, "-m", "vl2v", "embed", "--data", str(folder), "--teacher", args.teacher,
                     "--store", str(store), "--shard-size", str(args.shard_size)]
            if args.teacher_opt:
                embed += ["--teacher-opt", *args.teacher_opt]
            stream_mb, stream_s = peak_rss_mb(embed)
            base_mb, _ = peak_rss_mb([sys.executable, "-c",
                                      "import sys; from vl2v.data.dataset import load_domain_data; "
                                      "d = load_domain_data(sys.argv[1]); print(len(d.bank))", str(folder)])
            rows.append((f, n, stream_mb, stream_s, base_mb))
            print(f"  {f:>2}x ({n} images): streaming {stream_mb:7.0f} MiB ({stream_s:.0f}s), in-memory {base_mb:7.0f} MiB",
                  flush=True)
    s0, b0 = rows[0][2], rows[0][4]
    print(f"\npeak resident memory, teacher {args.teacher} {' '.join(args.teacher_opt or [])}, shard {args.shard_size}")
    print("| size | images | `vl2v embed` (streaming) | vs 1x | decode everything (training's bank) | vs 1x |")
    print("|---|---:|---:|---:|---:|---:|")
    for f, n, s, _, b in rows:
        print(f"| {f}x | {n} | {s:.0f} MiB | {s / s0:.2f} | {b:.0f} MiB | {b / b0:.2f} |")


if __name__ == "__main__":
    main()
