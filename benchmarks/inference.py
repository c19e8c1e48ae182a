"""Inference speed on CPU: teachers vs the distilled student (PyTorch and ONNX), in one run.

Measures images per second at batch 1 and batch 32 for
* the offline ConSE teacher (EfficientNet-Lite2 classifier x MiniLM class text, 260 px),
* an open_clip ViT-B/16 image tower with random weights (speed does not depend on the values),
* the EfficientNet-Lite0 student with its head baked in (PyTorch, eager), and
* the same student exported to ONNX and run with onnxruntime,
and prints each as a ratio to each teacher. Every model gets the same threads.

    python benchmarks/inference.py                     # synthetic ADiP student (pretrained backbone, random head)
    python benchmarks/inference.py --run OUT/adip/target-2-photo/seed0   # a trained run's student
    python benchmarks/inference.py --sizes 224 128 --batches 1 32 --min-time 3 --json bench.json
    python benchmarks/inference.py --run RUN --teacher lit --no-openclip   # also the LiT teacher a run learned from

The time of one model at one batch size is the total over repeated calls (after
warm-up) until ``--min-time`` seconds and at least 3 calls have passed; inputs
are float tensors already at each model's input size (decoding and resizing are
not timed). Numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a clone without installing

from vl2v.serving.export import DeployModel, build_head, onnx_session, save_model  # noqa: E402


def synthetic_adip(num_classes: int = 7, dim: int = 512) -> tuple[DeployModel, str]:
    """EfficientNet-Lite0 (offline ImageNet weights) + ADiP head (random projection to 512-d, random text classifier)."""
    from vl2v.config import Schedule
    from vl2v.methods import TaskContext, create_algorithm
    from vl2v.students.registry import create_student

    try:
        student = create_student("efficientnet_lite0", pretrained=True)
    except Exception:  # weights package missing: speed is the same with random weights
        student = create_student("efficientnet_lite0", pretrained=False)
    text = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    ctx = TaskContext(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)], source_domains=[],
                      text_classifier=text, teacher_dim=dim, schedule=Schedule())
    algo = create_algorithm("adip", ctx, student).eval()
    head, _ = build_head(algo)
    return DeployModel(algo.student, head).eval(), f"efficientnet_lite0 + ADiP head ({num_classes} classes, {dim}-d, synthetic)"


def run_student(run_dir: str) -> tuple[DeployModel, str]:
    from vl2v.serving.export import deploy_model, load_student_run

    loaded = load_student_run(run_dir)
    model, head = deploy_model(loaded)
    args = loaded.config["args"]
    # VL2V-SD's student is a copy of the teacher's image encoder, not the registry student its config names
    student = (args["student"] if loaded.algorithm.uses_registry_student else
               f"copy of the {args['teacher'].split(':')[0]} teacher's image encoder at {loaded.image_size} px")
    return model, f"{student} + {head['kind']} head from {run_dir}"


def measure(fn: Callable[[], object], batch: int, min_time: float, warmup: int = 2) -> tuple[float, int]:
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= min_time and n >= 3:
            return n * batch / dt, n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="a trained run directory whose student to time (default: a synthetic ADiP student)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 128], help="student input sizes (default 224 128)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 32], help="batch sizes (default 1 32)")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement, at least (default 3)")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for every model (default: torch's default, one per core; on a busy machine "
                         "--threads 1 avoids OpenMP threads spinning against other processes)")
    ap.add_argument("--no-openclip", action="store_true", help="skip the ViT-B/16 teacher")
    ap.add_argument("--no-conse", action="store_true", help="skip the ConSE teacher")
    ap.add_argument("--teacher", action="append", default=[], metavar="SPEC",
                    help="also time this registered teacher's embed_images, e.g. `--teacher lit` (a built LiT "
                         "teacher; repeatable): the teacher a run distilled from, for its own ratio")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    from vl2v.teachers.registry import create_teacher

    models: list[tuple[str, str, int, Callable[[np.ndarray], object], str]] = []  # name, kind, size, fn, note

    if not args.no_conse:
        t0 = time.time()
        conse = create_teacher("conse")
        models.append(("teacher: ConSE (offline)", "teacher", conse.image_size,
                       lambda x, t=conse: t.embed_images(torch.from_numpy(x)), f"loaded in {time.time() - t0:.1f}s"))
    if not args.no_openclip:
        t0 = time.time()
        clip = create_teacher("openclip:ViT-B-16:none")
        models.append(("teacher: open_clip ViT-B/16", "teacher", clip.image_size,
                       lambda x, t=clip: t.embed_images(torch.from_numpy(x)), f"random weights, loaded in {time.time() - t0:.1f}s"))
    for spec in args.teacher:
        t0 = time.time()
        extra = create_teacher(spec)
        models.append((f"teacher: {spec}", "teacher", extra.image_size,
                       lambda x, t=extra: t.embed_images(torch.from_numpy(x)), f"loaded in {time.time() - t0:.1f}s"))
    student, desc = run_student(args.run) if args.run else synthetic_adip()
    print(f"student: {desc}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="vl2v-bench-"))
    for size in args.sizes:
        def pt(x, m=student):
            with torch.inference_mode():
                return m(torch.from_numpy(x))

        models.append((f"student: PyTorch {size}px", "student", size, pt, "eager, inference_mode"))
        t0 = time.time()
        path = save_model(student, "onnx", tmp / f"student{size}.onnx", size)
        sess = onnx_session(path, threads)
        models.append((f"student: ONNX {size}px", "student", size,
                       lambda x, s=sess: s.run(["logits"], {"images": x}), f"onnxruntime CPU, exported in {time.time() - t0:.0f}s"))

    load0 = os.getloadavg()
    results = []
    for name, kind, size, fn, note in models:
        for b in args.batches:
            x = np.random.default_rng(0).random((b, 3, size, size), dtype=np.float32)
            ips, n = measure(lambda: fn(x), b, args.min_time)
            results.append({"model": name, "kind": kind, "input": size, "batch": b, "images_per_s": ips, "calls": n,
                            "note": note})
            print(f"  {name:<30} {size:>4}px  batch {b:>3}: {ips:9.1f} images/s  ({n} calls)", flush=True)

    teachers = [m for m, k, *_ in models if k == "teacher"]
    ips = {(r["model"], r["batch"]): r["images_per_s"] for r in results}
    print()
    load1 = os.getloadavg()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"with {threads} threads; onnxruntime with {threads} threads; 1-min load average {load0[0]:.1f} at the "
          f"start, {load1[0]:.1f} at the end (above the thread count, other processes competed for the cores)")
    head = "| model | input | batch | images/s | " + " | ".join(f"x {t.split(': ', 1)[1]}" for t in teachers) + " |"
    print(head)
    print("|" + "---|" * (4 + len(teachers)))
    for r in results:
        ratios = [f"{r['images_per_s'] / ips[(t, r['batch'])]:.2f}" if ips.get((t, r["batch"])) else "-" for t in teachers]
        r["ratio_to"] = {t: (r["images_per_s"] / ips[(t, r["batch"])]) if ips.get((t, r["batch"])) else None for t in teachers}
        print(f"| {r['model']} | {r['input']}px | {r['batch']} | {r['images_per_s']:.1f} | " + " | ".join(ratios) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
                                               "load_average": [load0[0], load1[0]],
                                               "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
