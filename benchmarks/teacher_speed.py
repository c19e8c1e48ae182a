"""Offline teacher (ConSE) image throughput on this CPU: today's path against cheaper ones, in one run.

Today's path is ``ConSETeacher.embed_images`` as the pipeline calls it: eager PyTorch, channels-last,
batch 64, 260 px. Every variant embeds the same ``--images`` real OfflinePACS images (teacher evaluation
views, already decoded and rendered: only the teacher is timed), and the variants are interleaved round
by round (``--repeats`` rounds), so a change in machine load hits all of them alike. Each variant's
images/s is its median over the rounds; its ratio is the median over the rounds of (today's time /
its time) in the same round.

Variants: batch size 16/64/128 (torch and ONNX Runtime), bf16 autocast on the CPU, torch.compile
(``--compile``; it compiles for a minute or more first), ONNX Runtime (the teacher's ``runtime=onnx``:
graph optimisation level ALL) and the same model at level BASIC, and a 224 px input instead of 260 px
(report only: it changes the teacher).

Parity (``--parity-images``, from the OfflinePACS "out" splits): ONNX Runtime and bf16 against eager
fp32 torch: max abs difference of the normalised embeddings, top-1 ImageNet class agreement, top-k
(k=10, the ConSE k) set agreement. Zero-shot accuracy (argmax cosine to "a photo of a {c}") on the
"out" splits (trial seed 0) at 260 px vs 224 px, with ONNX Runtime: validation data, not the reported
numbers.

    python benchmarks/teacher_speed.py                        # quick: 64 images, 3 rounds (5 min on 2 busy cores)
    python benchmarks/teacher_speed.py --images 128 --repeats 3 --compile --json speed.json   # ~11 min there
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a clone without installing

from vl2v.data.dataset import load_domain_data  # noqa: E402
from vl2v.data.transforms import teacher_view  # noqa: E402
from vl2v.teachers.conse import ConSELogits, ConSETeacher  # noqa: E402
from vl2v.teachers.onnx_runtime import OnnxModule, make_session  # noqa: E402
from vl2v.utils.io import vl2v_home  # noqa: E402


def load(root: Path) -> tuple[list[torch.Tensor], list[int], list[str], list[str], list[int]]:
    """Every image of the "out" splits (trial seed 0): uint8 images, labels, class names, domains, domain index."""
    data = load_domain_data(root, trial_seed=0)
    imgs, labels, doms = [], [], []
    for d in range(len(data.domains)):
        for i in data.split_items(d, "out"):
            imgs.append(data.bank.images[i])
            labels.append(data.bank.records[i].label)
            doms.append(d)
    return imgs, labels, data.classes, data.domains, doms


def views(imgs: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.stack([teacher_view(im, None, size) for im in imgs])


def chunked(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, bs: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([F.normalize(fn(c).float(), dim=-1) for c in x.split(bs)])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=vl2v_home() / "datasets" / "offline_pacs", help="OfflinePACS folder")
    ap.add_argument("--images", type=int, default=64,
                    help="images per timed pass (default 64; batch 128 needs more to differ from batch 64)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--parity-images", type=int, default=200, help="images for the parity numbers (default 200)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile (compiles first; slow on CPU)")
    ap.add_argument("--no-zero-shot", action="store_true", help="skip the 224 vs 260 px zero-shot accuracy")
    ap.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    load_start = os.getloadavg()
    t_start = time.time()

    t0 = time.time()
    imgs, labels, classes, domains, doms = load(args.root)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(imgs), generator=g).tolist()  # a mix of domains, the same every run
    n_speed, n_par = min(args.images, len(imgs)), min(args.parity_images, len(imgs))
    print(f"{len(imgs)} out-split images of {args.root} ({', '.join(domains)}) loaded in {time.time() - t0:.1f}s",
          flush=True)

    t0 = time.time()
    teacher = ConSETeacher()  # today's path: eager torch, batch 64
    t_torch = time.time() - t0
    t0 = time.time()
    onnx = ConSETeacher(runtime="onnx")
    t_onnx = time.time() - t0
    print(f"teachers built: torch {t_torch:.1f}s, onnx {t_onnx:.1f}s "
          f"({'exported' if onnx._onnx.exported else 'cached'}: {onnx._onnx.path})", flush=True)
    enc = teacher.encoder
    logits_module = ConSELogits(enc).eval()
    onnx224 = OnnxModule(logits_module, 224, "conse-efficientnet_lite2", threads)
    basic = make_session(onnx._onnx.path, threads, level="basic")

    x260 = views([imgs[i] for i in order[:max(n_speed, n_par)]], 260)
    x224 = views([imgs[i] for i in order[:n_speed]], 224)
    xs = x260[:n_speed]

    # each variant: (name, input px, batch, fn(images at that px) -> normalised embeddings)
    def with_batch(t: ConSETeacher, bs: int) -> Callable[[torch.Tensor], torch.Tensor]:
        def run(x: torch.Tensor) -> torch.Tensor:
            old, t.batch_size = t.batch_size, bs
            try:
                return t.embed_images(x)
            finally:
                t.batch_size = old
        return run

    def bf16(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return teacher.embed_images(x)

    def ort_basic(x: torch.Tensor) -> torch.Tensor:
        def fn(c: torch.Tensor) -> torch.Tensor:
            return enc.combine(torch.from_numpy(basic.run(["logits"], {"images": c.contiguous().numpy()})[0]))
        return chunked(fn, x, 64)

    def torch_cl(c: torch.Tensor) -> torch.Tensor:
        return enc.combine(enc.logits(c.contiguous(memory_format=torch.channels_last)))

    variants: list[tuple[str, int, int, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("torch eager (today)", 260, 64, teacher.embed_images),
        ("torch eager", 260, 16, with_batch(teacher, 16)),
        ("torch eager", 260, 128, with_batch(teacher, 128)),
        ("torch bf16 autocast", 260, 64, bf16),
        ("onnxruntime ALL (runtime=onnx)", 260, 64, onnx.embed_images),
        ("onnxruntime ALL", 260, 16, with_batch(onnx, 16)),
        ("onnxruntime ALL", 260, 128, with_batch(onnx, 128)),
        ("onnxruntime BASIC", 260, 64, ort_basic),
        ("torch eager, 224 px input", 224, 64, lambda x: chunked(torch_cl, x, 64)),
        ("onnxruntime ALL, 224 px input", 224, 64, lambda x: chunked(lambda c: enc.combine(onnx224(c)), x, 64)),
    ]
    compile_s = None
    if args.compile:
        t0 = time.time()
        compiled = torch.compile(enc)
        run_c = lambda x: chunked(lambda c: compiled(c.contiguous(memory_format=torch.channels_last)), x, 64)  # noqa: E731
        run_c(xs)  # compile (and a second shape if the last chunk is short)
        compile_s = time.time() - t0
        variants.insert(4, ("torch.compile (inductor)", 260, 64, run_c))
    inputs = {260: xs, 224: x224}

    for _, px, bs, fn in variants:  # warm-up on one small batch: first calls allocate, ORT plans
        fn(inputs[px][:min(bs, 16)])
    times: dict[int, list[float]] = {i: [] for i in range(len(variants))}
    loads = []
    for r in range(args.repeats):
        for i, (_, px, _, fn) in enumerate(variants):
            t0 = time.perf_counter()
            fn(inputs[px])
            times[i].append(time.perf_counter() - t0)
        loads.append(os.getloadavg()[0])
        print(f"round {r + 1}/{args.repeats} done (load {loads[-1]:.2f})", flush=True)

    # parity against eager fp32 torch (today's path), on the same images
    xp = x260[:n_par]
    with torch.no_grad():
        ref_logits = torch.cat([enc.logits(c.contiguous(memory_format=torch.channels_last)) for c in xp.split(64)])
        ort_logits = torch.cat([onnx._onnx(c) for c in xp.split(64)])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf_logits = torch.cat([enc.logits(c.contiguous(memory_format=torch.channels_last)) for c in xp.split(64)])
    ref_emb = F.normalize(enc.combine(ref_logits), dim=-1)
    assert torch.equal(ref_emb[:8], teacher.embed_images(xp[:8])), "the split encoder must be the teacher's path"
    parity = {}
    for name, lg in (("onnxruntime", ort_logits), ("bf16 autocast", bf_logits.float())):
        emb = F.normalize(enc.combine(lg), dim=-1)
        top_ref, top = ref_logits.topk(enc.k, dim=-1).indices, lg.topk(enc.k, dim=-1).indices
        parity[name] = {
            "images": n_par,
            "max_abs_embedding_diff": float((emb - ref_emb).abs().max()),
            "min_cosine": float((emb * ref_emb).sum(-1).min()),
            "max_abs_logit_diff": float((lg - ref_logits).abs().max()),
            "top1_agreement": float((top[:, 0] == top_ref[:, 0]).float().mean()),
            "topk_set_agreement": float(torch.tensor([set(a.tolist()) == set(b.tolist())
                                                      for a, b in zip(top, top_ref)]).float().mean()),
            "topk_order_agreement": float((top == top_ref).all(-1).float().mean()),
        }

    zero_shot = None
    if not args.no_zero_shot:
        text = teacher.embed_texts([f"a photo of a {c}" for c in classes])
        y = torch.tensor(labels)
        zero_shot = {}
        for px, mod in ((260, onnx._onnx), (224, onnx224)):
            x = views(imgs, px)
            with torch.no_grad():
                emb = torch.cat([F.normalize(enc.combine(mod(c)), dim=-1) for c in x.split(64)])
            hit = ((emb @ text.t()).argmax(-1) == y).float()
            per = {dn: float(hit[torch.tensor(doms) == d].mean()) for d, dn in enumerate(domains)}
            zero_shot[px] = {"per_domain": per, "mean_over_domains": statistics.mean(per.values()),
                             "all_images": float(hit.mean()), "images": len(imgs)}
    load_end = os.getloadavg()

    base = times[0]
    rows = []
    for i, (name, px, bs, _) in enumerate(variants):
        t = times[i]
        ratios = [b / v for b, v in zip(base, t)]
        rows.append({"variant": name, "input_px": px, "batch": bs, "images_per_s": n_speed / statistics.median(t),
                     "x_today": statistics.median(ratios), "x_today_min": min(ratios), "x_today_max": max(ratios)})

    print()
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} threads; torch "
          f"{torch.__version__}; onnxruntime {__import__('onnxruntime').__version__}")
    print(f"load average (1/5/15 min): start {load_start[0]:.2f}/{load_start[1]:.2f}/{load_start[2]:.2f}, "
          f"end {load_end[0]:.2f}/{load_end[1]:.2f}/{load_end[2]:.2f}; after each round "
          + ", ".join(f"{v:.2f}" for v in loads))
    print(f"{n_speed} images per pass, {args.repeats} interleaved rounds; ratio = median over rounds of "
          f"today's time / variant's time in the same round (min-max in brackets)")
    if compile_s is not None:
        print(f"torch.compile: first call (compilation) took {compile_s:.0f}s")
    print()
    print(f"| {'variant':<32} | {'input':>5} | {'batch':>5} | {'images/s':>8} | {'x today':>19} |")
    print(f"|{'-' * 34}|{'-' * 6}:|{'-' * 6}:|{'-' * 9}:|{'-' * 20}:|")
    for r in rows:
        rng = f"({r['x_today_min']:.2f}-{r['x_today_max']:.2f})"
        bs = f"{r['batch']}*" if r["batch"] > n_speed else str(r["batch"])
        print(f"| {r['variant']:<32} | {r['input_px']:>3}px | {bs:>5} | {r['images_per_s']:>8.1f} | "
              f"{r['x_today']:>6.2f}x {rng:>11} |")
    if any(r["batch"] > n_speed for r in rows):
        print(f"* batch larger than the {n_speed} images of a pass: one call of {n_speed} (use --images 128 or more)")
    print()
    print(f"parity against today's path (eager fp32 torch, 260 px) on {n_par} out-split images:")
    for name, p in parity.items():
        print(f"  {name:<14} max|emb diff| {p['max_abs_embedding_diff']:.2e}  min cos {p['min_cosine']:.6f}  "
              f"max|logit diff| {p['max_abs_logit_diff']:.2e}  top-1 agree {100 * p['top1_agreement']:.1f}%  "
              f"top-{enc.k} set agree {100 * p['topk_set_agreement']:.1f}%  "
              f"top-{enc.k} order agree {100 * p['topk_order_agreement']:.1f}%")
    if zero_shot:
        print()
        print(f"zero-shot accuracy ('a photo of a {{c}}', {len(imgs)} images of the out splits, trial seed 0; "
              "validation data, not reported numbers; onnxruntime):")
        for px, z in zero_shot.items():
            per = "  ".join(f"{d} {100 * a:.1f}" for d, a in z["per_domain"].items())
            print(f"  {px} px: mean over domains {100 * z['mean_over_domains']:.1f}%  (all {100 * z['all_images']:.1f}%;"
                  f" {per})")
        d = zero_shot[224]["mean_over_domains"] - zero_shot[260]["mean_over_domains"]
        print(f"  224 - 260 px: {100 * d:+.1f} points (mean over domains)")
    print(f"\ntotal {time.time() - t_start:.0f}s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "threads": threads, "torch": torch.__version__, "load_start": load_start, "load_end": load_end,
            "round_loads": loads, "images": n_speed, "repeats": args.repeats, "compile_seconds": compile_s,
            "rows": rows, "parity": parity, "zero_shot": zero_shot}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
