"""The data pipeline's speed and memory, each as a ratio to today's path measured in the same run.

"Today's path" is the pipeline before loader workers and the frozen-prefix cache:
``workers=0``, ``cache_prefix=False``, ``data_mode="memory"`` (and, where TrainConfig has
them, ``amp="off"``, ``compile=False``). Sections (``--sections``):

train   training images/s (images through the student per second) of the fine-tuning stage
        * fast-profile settings (EfficientNet-Lite0, 128 px, batch 16 x 3 domains, freeze_stages 4) for
          erm_ft (a fresh augmentation per step) and adip (replays stored views, views=0 and views=4):
          today vs cache_prefix vs cache_prefix + 1, 2 loader workers;
        * paper-profile settings (224 px, batch 32 x 3, whole backbone trainable: nothing to cache), erm_ft:
          today vs workers;
        * with ``--device cuda``: students resnet50 and vit_base_patch16_224 (random weights), and bf16
          autocast / torch.compile variants when TrainConfig has ``amp`` / ``compile``;
        plus the share of step time spent blocked on the next batch ("data wait").
eval    one ``Trainer.evaluate`` pass (every evaluation split): today vs prefix-cached, warm caches; the
        one-off cost of filling each cache (first pass) alongside.
loader  rendering training views (fresh augmentations, 128 px) per loader-worker count 0..cpu_count,
        from the in-memory bank and from the stream (decoded from disk).
rss     peak resident memory of a short training run (fresh process each; erm_ft, 4 steps, 1 target, random
        student, no teacher) on synthetic folders of 1x, 4x, 16x size, data_mode memory vs stream.
teacher runs ``benchmarks/teacher_speed.py`` (teacher cost) if it exists and prints its output.

How training is timed: the real ``Trainer.run`` on a short schedule, with ``TrainerHooks``
(vl2v/training/hooks.py) that (a) skip frozen-backbone stages (adip's Align: they train on cached
features, not this pipeline), (b) answer evaluations with placeholders (so only steps cost time), and
(c) keep the times the loop reports for each step of the fine-tuning stage (``on_step``): "wait" is the
time blocked on the next batch (planning, rendering or waiting for loader workers, assembling, copying
to the device), a step's time runs from asking for its batch to the end of the step (so it includes
``algo.update`` and the loop's bookkeeping). The eval section's times are the loop's ``on_eval``. The first ``--warmup`` steps (worker start-up, torch.compile, caches being filled)
and the evaluation steps (first and last) are not counted. Variants are interleaved (order reversed
on every other repeat) and each number is the median over ``--repeats``.

    python benchmarks/pipeline.py                         # CPU, ~5-8 min on 2 cores
    python benchmarks/pipeline.py --quick                 # tiny sizes (the test)
    python benchmarks/pipeline.py --device cuda --sections train,eval,loader
    python benchmarks/pipeline.py --sections rss --out rss.md

Numbers depend on the machine and on what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VL2V_PROGRESS", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a clone without installing

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

SECTIONS = ("train", "eval", "loader", "rss", "teacher")
OFFLINE_PACS = Path.home() / ".cache" / "vl2v" / "datasets" / "offline_pacs"
SCRATCH = Path(tempfile.gettempdir()) / "vl2v-bench-pipeline"


# --------------------------------------------------------------------------- data and a cheap teacher
def make_folder(root: Path, n: int, size: int = 256, domains=("a", "b", "c"), classes=("x", "y", "z", "w")) -> Path:
    """``root/domain/class/NNNNNN.png``: n blocky-noise PNGs (compressible like photos), written once."""
    done = root / ".complete"
    if done.exists():
        return root
    if root.exists():
        shutil.rmtree(root)
    rng = np.random.RandomState(0)
    for i in range(n):
        d, c = domains[i % len(domains)], classes[(i // len(domains)) % len(classes)]
        folder = root / d / c
        folder.mkdir(parents=True, exist_ok=True)
        arr = (rng.rand(max(2, size // 8), max(2, size // 8), 3) * 255).astype(np.uint8)
        Image.fromarray(arr).resize((size, size), Image.NEAREST).save(folder / f"{i:06d}.png")
    done.write_text("ok")
    return root


def register_bench_teacher() -> str:
    """A fixed random conv net as the teacher ("bench-tiny"): cached targets cost next to nothing,
    so the student side is what is measured (teacher cost: benchmarks/teacher_speed.py)."""
    import hashlib

    import torch.nn.functional as F
    from torch import nn

    from vl2v.teachers.base import Teacher
    from vl2v.teachers.registry import TEACHERS, register_teacher

    class BenchTeacher(Teacher):
        backend = "bench-tiny"
        white_box = False

        def __init__(self, dim: int = 512, size: int = 32) -> None:
            self.embed_dim, self.image_size = int(dim), int(size)
            self._identity = f"bench-tiny(dim={self.embed_dim},size={self.image_size})"
            g = torch.Generator().manual_seed(0)
            self.conv = nn.Conv2d(3, 16, 3, stride=2)
            self.fc = nn.Linear(16, self.embed_dim)
            with torch.no_grad():
                for p in [*self.conv.parameters(), *self.fc.parameters()]:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.3)

        def _encode_images(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.relu(self.conv(x - 0.5)).mean(dim=(2, 3)))

        def _encode_texts(self, texts: list[str]) -> torch.Tensor:
            return torch.stack([torch.randn(self.embed_dim, generator=torch.Generator().manual_seed(
                int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))) for t in texts])

    if "bench-tiny" not in TEACHERS:
        register_teacher("bench-tiny", white_box=False, summary="benchmark-only: fixed random conv net")(
            lambda spec=None, **opts: BenchTeacher(**opts))
    return "bench-tiny"


# --------------------------------------------------------------------------- timing harness
def _train_fields() -> set[str]:
    from vl2v.config import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def _bench_hooks(warmup: int, stub_eval: bool, stop_after: int | None):
    """Hooks that time the real loop (see the module docstring): they skip the frozen-backbone stages, answer
    evaluations with placeholders (``stub_eval``), and keep each fine-tuning step's times."""
    from vl2v.training.hooks import EvalInfo, StepInfo, TrainerHooks

    class BenchHooks(TrainerHooks):
        synchronize = True  # CUDA: step and evaluation times include the device's work

        def __init__(self) -> None:
            self.warmup, self.stub_eval = warmup, stub_eval
            self.stop_after = stop_after  # last step to run (the stage's own last step is an evaluation step)
            self.step_s: list[float] = []
            self.wait_s: list[float] = []
            self.eval_s: list[float] = []
            self.eval_images = 0

        def run_stage(self, stage) -> bool:
            return not stage.backbone_frozen

        def evaluation(self, sets):
            if not self.stub_eval:
                return None
            out = {f"env{d}_{w}_{m}": 0.0 for d, w in sets for m in ("acc", "loss")}
            return {**out, "val_acc": 0.0, "val_loss": 0.0}

        def on_eval(self, info: EvalInfo) -> None:
            if not self.stub_eval:
                self.eval_images = info.images
                self.eval_s.append(info.seconds)

        def on_step(self, info: StepInfo) -> bool:
            timed = not info.stage.backbone_frozen
            if timed and info.step >= self.warmup and not info.evaluated:
                self.wait_s.append(info.wait_s)
                self.step_s.append(info.step_s)
            return timed and self.stop_after is not None and info.step >= self.stop_after

    return BenchHooks()


class Bench:
    """Loaded data, shared resources per view count, student templates: everything variants share."""

    def __init__(self, data_dir: Path, device: str, max_side: int, log) -> None:
        from vl2v.config import ExperimentConfig
        from vl2v.experiment.setup import check_experiment, prepare

        self.device = torch.device(device)
        if self.device.type == "cuda":  # as run_experiment does
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        teacher = register_bench_teacher()
        cfg = ExperimentConfig(dataset=None, data_dir=str(data_dir), algorithms=("erm_ft", "adip"), targets=(0,),
                               teacher=teacher, store="memory", student="efficientnet_lite0", student_pretrained=False,
                               data_mode="memory", workers=0, max_side=max_side)
        from vl2v.config import with_settings

        cfg = with_settings(cfg, {"device": device})
        t0 = time.time()
        self.exp = prepare(cfg, check_experiment(cfg), log=lambda *_: None)
        self.load_s = time.time() - t0
        self.data = self.exp.data
        self._res = {0: self.exp.res}
        self._templates: dict[str, object] = {"efficientnet_lite0": self.exp.make_student()}
        self.fills: dict[str, list] = {}  # one-off cache fills: what -> [seconds, images]
        self._wrap_fills(self.exp.res, "views=0")
        self.tmp = Path(tempfile.mkdtemp(prefix="vl2v-bench-pipeline-"))
        self._n = 0
        log(f"data: {data_dir}: {len(self.data.bank)} images in memory, domains {self.data.domains} "
            f"(loaded in {self.load_s:.0f}s)")

    def _wrap_fills(self, res, label: str) -> None:
        """Record the time of each first (cache-filling) frozen_features call."""
        orig = res.frozen_features

        def timed(student, indices, kind, key, prefix=None):
            cache_key = key + (kind,) + (("prefix", prefix) if prefix else ())
            cold = any(i not in res._features.get(cache_key, {}) for i in indices)
            t0 = time.perf_counter()
            out = orig(student, indices, kind, key, prefix=prefix)
            if cold:
                what = f"{key[0]} {key[-1]}px stage-{prefix} activations" if prefix else f"{key[0]} {key[-1]}px features"
                f = self.fills.setdefault(f"{what} ({kind}{', ' + label if kind == 'train' else ''})", [0.0, 0])
                f[0] += time.perf_counter() - t0
                f[1] += len(indices) * (res.n_views if kind == "train" else 1)
            return out

        res.frozen_features = timed

    def res(self, views: int):
        from vl2v.training.resources import SharedResources

        if views not in self._res:
            base = self.exp.res
            r = SharedResources(data=base.data, store=base.store, views=views, view_seed=base.view_seed,
                                device=base.device, workers=0)
            r._text = base._text  # text embeddings are the same
            self._wrap_fills(r, f"views={views}")
            self._res[views] = r
        return self._res[views]

    def student(self, name: str, size: int):
        from vl2v.students.registry import create_student

        if name not in self._templates:
            torch.manual_seed(0)
            self._templates[name] = create_student(name, pretrained=False, freeze_bn=True)
        template = self._templates[name]

        def make():
            import copy

            s = copy.deepcopy(template)
            s.image_size = size
            return s

        return make, (name, "random", size), template

    def train_cfg(self, profile: str, size: int, batch: int, steps: int, **over):
        from vl2v.config import ExperimentConfig, apply_profile, with_settings

        fields = _train_fields()
        base = {"amp": "off", "compile": False}
        settings = dict(image_size=size, batch_size=batch, steps=steps, eval_every=10 ** 6, save_checkpoints=False,
                        device=str(self.device), cache_prefix=False)
        settings.update({k: v for k, v in base.items() if k in fields})
        settings.update(over)
        cfg = with_settings(apply_profile(ExperimentConfig(dataset=None, data_dir="x"), profile), settings)
        return cfg.train

    def run(self, algorithm: str, train_cfg, views: int, workers: int, student: str, warmup: int, stub_eval=True,
            stop_after: int | None = None):
        """One short run through the real loop, timed by its hooks; returns the trainer and the hooks (timings)."""
        from vl2v.training.loop import Trainer
        from vl2v.training.spec import RunSpec

        res = self.res(views)
        res.workers = workers
        make, key, _ = self.student(student, train_cfg.image_size)
        self._n += 1
        hooks = _bench_hooks(warmup, stub_eval, stop_after)
        tr = Trainer(RunSpec(algorithm, 0), train_cfg, res, make, self.tmp / f"run{self._n}",
                     {"teacher_identity": self.exp.teacher_identity, "student": student}, key, data=self.data,
                     hooks=hooks)
        tr.run(resume=False)
        shutil.rmtree(self.tmp / f"run{self._n}", ignore_errors=True)
        return tr, hooks

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _fmt_ratio(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}x"


# --------------------------------------------------------------------------- section: train
def train_section(bench: Bench, args, log) -> list[str]:
    fields = _train_fields()
    cuda = bench.device.type == "cuda"
    precision = cuda or args.precision
    notes: list[str] = []
    variants_amp: list[tuple[str, dict]] = []
    if precision:
        if "amp" in fields:
            variants_amp.append(("bf16", {"amp": "bf16"}))
            if "compile" in fields:
                variants_amp.append(("bf16 + compile", {"amp": "bf16", "compile": True}))
        elif "compile" in fields:
            variants_amp.append(("compile", {"compile": True}))
        if not variants_amp:
            notes.append("TrainConfig has neither `amp` nor `compile`: bf16 autocast / torch.compile not measured.")
    else:
        notes.append("bf16 autocast / torch.compile variants: CUDA only (`--device cuda`, or `--precision` to force).")
    workers = args.train_workers

    # (setting label, profile, size, batch, steps, warmup, student, algorithm, views, [(variant, workers, overrides)])
    configs = []
    for student in args.students:
        splittable = bool(getattr(bench.student(student, args.fast_size)[2], "splittable", False))
        if splittable:
            fast_variants = [("today", 0, {}), ("cache_prefix", 0, {"cache_prefix": True})]
            fast_variants += [(f"cache_prefix + {w} workers", w, {"cache_prefix": True}) for w in workers]
            fast_variants += [(f"cache_prefix + {workers[-1]} workers + {n}", workers[-1], {"cache_prefix": True, **o})
                              for n, o in variants_amp]
            for algo, views in (("erm_ft", 0), ("adip", 0), ("adip", args.views)):
                configs.append((f"fast {args.fast_size}px b{args.fast_batch}x3", "fast", args.fast_size,
                                args.fast_batch, args.steps, student, algo, views, fast_variants))
        else:
            notes.append(f"{student}: no stage-by-stage forward pass (nothing to cache, fixed input size): "
                         f"paper settings only.")
        paper_variants = [("today", 0, {})] + [(f"{w} workers", w, {}) for w in workers]
        paper_variants += [(f"{workers[-1]} workers + {n}", workers[-1], o) for n, o in variants_amp]
        configs.append((f"paper {args.paper_size}px b{args.paper_batch}x3", "paper", args.paper_size,
                        args.paper_batch, args.paper_steps, student, "erm_ft", 0, paper_variants))

    results: dict[tuple, dict[str, list[float]]] = {}
    for rep in range(args.repeats):
        for ci, (label, profile, size, batch, steps, student, algo, views, variants) in enumerate(configs):
            order = variants if rep % 2 == 0 else variants[::-1]
            for name, w, over in order:
                warm = args.warmup if profile == "fast" else args.paper_warmup
                # the stage's last step would be an evaluation step: stop one short of it
                cfg = bench.train_cfg(profile, size, batch, warm + steps + 1, **over)
                t0 = time.time()
                tr, timed = bench.run(algo, cfg, views, w, student, warm, stop_after=warm + steps - 1)
                n_img = batch * len(tr.task.sources)
                r = results.setdefault((ci, name), {"ips": [], "wait": [], "wall": []})
                r["ips"].append(n_img * len(timed.step_s) / sum(timed.step_s))
                r["wait"].append(sum(timed.wait_s) / sum(timed.step_s))
                r["wall"].append(time.time() - t0)
                log(f"  [{rep + 1}/{args.repeats}] {label} {student} {algo} views={views} {name}: "
                    f"{r['ips'][-1]:.1f} images/s, data wait {100 * r['wait'][-1]:.0f}% "
                    f"({len(timed.step_s)} steps timed; run {time.time() - t0:.1f}s)")

    lines = ["## Training images/s (fine-tuning stage, steps only)", "",
             f"{args.steps} timed steps per run after {args.warmup} warm-up steps (paper: {args.paper_steps} after "
             f"{args.paper_warmup}), median of {args.repeats} interleaved runs (each run's images/s in the last "
             f"column); device {bench.device}; "
             f"images/s = images through the student per second; vs today = ratio to `today` "
             f"(workers 0, cache_prefix off, data in memory{', amp off, no compile' if 'amp' in fields else ''}) "
             f"of the same row group; data wait = share of step time blocked on the next batch.", "",
             "| setting | student | algorithm | variant | images/s | vs today | data wait | runs |",
             "|---|---|---|---|---:|---:|---:|---|"]
    for ci, (label, profile, size, batch, steps, student, algo, views, variants) in enumerate(configs):
        base = _median(results[(ci, "today")]["ips"])
        alg = f"{algo} (views={views})" if algo == "adip" else f"{algo} (fresh aug)"
        for name, _, _ in variants:
            r = results[(ci, name)]
            ips = _median(r["ips"])
            lines.append(f"| {label} | {student} | {alg} | {name} | {ips:.1f} | {_fmt_ratio(ips / base)} | "
                         f"{100 * _median(r['wait']):.0f}% | {' / '.join(f'{x:.0f}' for x in r['ips'])} |")
    fills = {w: v for w, v in bench.fills.items() if "(train" in w}
    if fills:
        lines += ["", "One-off cache fills during these runs (not in the step times): " +
                  "; ".join(f"{w}: {v[1]} views in {v[0]:.1f}s" for w, v in fills.items())]
    if notes:
        lines += [""] + [f"Note: {n}" for n in notes]
    return lines


# --------------------------------------------------------------------------- section: eval
def eval_section(bench: Bench, args, log) -> list[str]:
    variants = [("today", {}), ("cache_prefix", {"cache_prefix": True})]
    student = args.students[0]
    if not getattr(bench.student(student, args.fast_size)[2], "splittable", False):
        return ["## Evaluation images/s", "", f"{student} has no stage-by-stage forward pass: nothing to compare."]
    warm: dict[str, list[float]] = {n: [] for n, _ in variants}
    cold: dict[str, float] = {}
    n_img = 0
    fills0 = {w: list(v) for w, v in bench.fills.items()}
    for rep in range(args.repeats):
        for name, over in (variants if rep % 2 == 0 else variants[::-1]):
            cfg = bench.train_cfg("fast", args.fast_size, args.fast_batch, args.eval_passes, eval_every=1, **over)
            _, timed = bench.run("erm_ft", cfg, 0, 0, student, warmup=0, stub_eval=False)
            n_img = timed.eval_images
            times = list(timed.eval_s)
            if name not in cold:
                cold[name] = times.pop(0)
            warm[name] += times
            log(f"  [{rep + 1}/{args.repeats}] eval {name}: " + ", ".join(f"{n_img / t:.1f}" for t in timed.eval_s) +
                " images/s per pass")
    base = n_img / _median(warm["today"])
    fills = {w: v for w, v in bench.fills.items() if w not in fills0 and "(eval" in w}
    lines = ["## Evaluation images/s (one `Trainer.evaluate` pass)", "",
             f"{student}, {args.fast_size}px, fast profile (freeze_stages 4), {n_img} images per pass (every domain's "
             f"'out' split + the target's 'in' split), eval batch 128, workers 0; warm = caches filled, median of "
             f"{len(warm['today'])} passes; first pass = the one-off pass that fills the cache (today: the eval views "
             f"held in memory; cache_prefix: the stage-4 activations).", "",
             "| variant | images/s (warm) | vs today | first pass (s) | first pass images/s |",
             "|---|---:|---:|---:|---:|"]
    for name, _ in variants:
        ips = n_img / _median(warm[name])
        lines.append(f"| {name} | {ips:.1f} | {_fmt_ratio(ips / base)} | {cold[name]:.2f} | {n_img / cold[name]:.1f} |")
    if fills:
        lines += ["", "Of which one-off cache fills: " + "; ".join(f"{w}: {v[1]} images in {v[0]:.1f}s"
                                                                  for w, v in fills.items())]
    return lines


# --------------------------------------------------------------------------- section: loader
def loader_section(bench: Bench, args, log) -> list[str]:
    from vl2v.data.dataset import ImageBank
    from vl2v.data.loader import RenderRequest, render_stream
    from vl2v.data.transforms import AugConfig, sample_aug_params

    mem = bench.data.bank
    stream = ImageBank(mem.root, mem.records, None, mem.hashes, [], mem.shapes, mem.max_side)  # = load(mode="stream")
    g = torch.Generator().manual_seed(0)
    train = [i for d in range(1, len(bench.data.domains)) for i in bench.data.split_items(d, "in")]
    per = args.fast_batch * 3
    aug = AugConfig()

    def requests():
        reqs = []
        for _ in range(args.loader_batches + 1):
            idx = torch.randint(0, len(train), (per,), generator=g).tolist()
            items = tuple((train[j], sample_aug_params(g, aug, mem.aspect(train[j]))) for j in idx)
            reqs.append(RenderRequest((("student", args.fast_size, items),)))
        return reqs

    def rate(bank, w: int) -> float:
        it = render_stream(bank, iter(requests()), w)
        next(it)  # worker start-up and the first batch are not counted
        t0, n = time.perf_counter(), 0
        for (x,) in it:
            n += x.shape[0]
        return n / (time.perf_counter() - t0)

    counts = list(range(0, (os.cpu_count() or 1) + 1))
    res: dict[tuple[str, int], list[float]] = {}
    for rep in range(args.repeats):
        order = [(m, w) for w in counts for m in ("memory", "stream")]
        for m, w in (order if rep % 2 == 0 else order[::-1]):
            res.setdefault((m, w), []).append(rate(mem if m == "memory" else stream, w))
            log(f"  [{rep + 1}/{args.repeats}] loader {m} {w} workers: {res[(m, w)][-1]:.1f} images/s")
    base = _median(res[("memory", 0)])
    sbase = _median(res[("stream", 0)])
    lines = ["## Loader images/s (rendering training views)", "",
             f"fresh augmentations at {args.fast_size}px, {per} images per request, {args.loader_batches} requests "
             f"timed after the first (worker start-up excluded), median of {args.repeats}; nothing else runs "
             f"(no training step competes for the cores); {os.cpu_count()} CPU cores. vs today = ratio to 0 workers "
             f"from memory.", "",
             "| workers | memory images/s | vs today | stream images/s | vs today | stream vs stream 0 workers |",
             "|---:|---:|---:|---:|---:|---:|"]
    for w in counts:
        m, s = _median(res[("memory", w)]), _median(res[("stream", w)])
        lines.append(f"| {w} | {m:.1f} | {_fmt_ratio(m / base)} | {s:.1f} | {_fmt_ratio(s / base)} | "
                     f"{_fmt_ratio(s / sbase)} |")
    return lines


# --------------------------------------------------------------------------- section: rss
def _peak_rss_self_kib() -> int:
    """This process's peak resident memory since it started (or exec'd): /proc/self/status VmHWM.

    Not ``wait4``'s ``ru_maxrss``: Linux carries the parent's high-water mark into a child across
    fork/vfork + exec, so a child of a big parent reports the parent's peak (this benchmark's own paper-profile
    steps peak at ~9 GiB on the CPU)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_child(args) -> None:
    """One short training run (measured from outside by the parent)."""
    from vl2v.config import ExperimentConfig, apply_profile, with_settings
    from vl2v.experiment.run import run_experiment

    if args.rss_mode == "imports":  # the floor: torch and vl2v imported, nothing run
        print(f"PEAK_RSS_KIB {_peak_rss_self_kib()}", flush=True)
        return
    with tempfile.TemporaryDirectory() as out:
        cfg = ExperimentConfig(dataset=None, data_dir=args.rss_child, algorithms=("erm_ft",), targets=(0,),
                               student="efficientnet_lite0", student_pretrained=False, data_mode=args.rss_mode,
                               workers=0, store="memory", out_dir=out)
        cfg = apply_profile(cfg, "fast")
        over = {"eval_batch_size": args.rss_eval_batch} if getattr(args, "rss_eval_batch", None) else {}
        cfg = with_settings(cfg, {"steps": 4, "image_size": args.rss_size, "device": "cpu", **over})
        run_experiment(cfg, log=lambda *_: None)
    print(f"PEAK_RSS_KIB {_peak_rss_self_kib()}", flush=True)


def _peak_rss(cmds: list[list[str]], parallel: int = 1) -> list[tuple[float, float]]:
    """(peak RSS MiB, seconds) of each command, each a fresh process; ``parallel`` at a time."""
    out: list[tuple[float, float]] = []
    for start in range(0, len(cmds), parallel):
        procs = []
        for cmd in cmds[start:start + parallel]:
            # files, not pipes: a chatty child cannot block on a full pipe
            outf, errf = tempfile.TemporaryFile(), tempfile.TemporaryFile()
            procs.append((cmd, outf, errf, time.time(), subprocess.Popen(
                cmd, stdout=outf, stderr=errf, env={**os.environ, "VL2V_PROGRESS": "0"})))
        for cmd, outf, errf, t0, proc in procs:
            proc.wait()
            dt = time.time() - t0
            outf.seek(0)
            errf.seek(0)
            text, err = outf.read().decode(errors="replace"), errf.read().decode(errors="replace")
            outf.close()
            errf.close()
            peak = [int(line.split()[1]) for line in text.splitlines() if line.startswith("PEAK_RSS_KIB ")]
            if proc.returncode != 0 or not peak:
                raise SystemExit(f"failed: {' '.join(cmd)}\n{err[-3000:]}")
            out.append((peak[-1] / 1024.0, dt))
    return out


def _rss_forked(folder: str, mode: str, size: int, eval_batch: int, q) -> None:
    ns = argparse.Namespace(rss_child=folder, rss_mode=mode, rss_size=size, rss_eval_batch=eval_batch)
    try:
        rss_child(ns)
        q.put((_peak_rss_self_kib() / 1024.0, None))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent
        q.put((float("nan"), f"{type(exc).__name__}: {exc}"))


def _peak_rss_forked(jobs: list[tuple[str, str, int, int]]) -> list[tuple[float, float]]:
    """Like :func:`_peak_rss`, but each run is a process forked from a server that has only imported torch and
    vl2v (multiprocessing's forkserver): the same starting point as a fresh interpreter after its imports,
    without paying for the imports each time (``--quick``)."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "vl2v.experiment.run", "vl2v.students", "vl2v.methods"])
    out = []
    for job in jobs:
        q = ctx.Queue()
        t0 = time.time()
        p = ctx.Process(target=_rss_forked, args=(*job, q))
        p.start()
        mib, err = q.get()
        p.join()
        if err is not None or p.exitcode != 0:
            raise SystemExit(f"rss run {job} failed: {err or p.exitcode}")
        out.append((mib, time.time() - t0))
    return out


def rss_section(args, log) -> list[str]:
    folders = {f: make_folder(SCRATCH / f"rss-{args.rss_image}px-{args.rss_base * f}", args.rss_base * f,
                              args.rss_image) for f in args.rss_factors}
    keys = [(0, "imports")] + [(f, mode) for f in args.rss_factors for mode in ("memory", "stream")]
    cmds = [[sys.executable, str(Path(__file__).resolve()), "--rss-child", str(folders.get(f, "-")), "--rss-mode", mode,
             "--rss-size", str(args.fast_size), "--rss-eval-batch", str(args.rss_eval_batch)] for f, mode in keys]
    if args.rss_fork:
        rows = dict(zip(keys, _peak_rss_forked([(str(folders.get(f, "")), mode, args.fast_size, args.rss_eval_batch)
                                                for f, mode in keys])))
    else:
        rows = dict(zip(keys, _peak_rss(cmds, args.rss_parallel)))
    for (f, mode), (mib, sec) in rows.items():
        log(f"  rss {f}x ({args.rss_base * f} images) {mode}: {mib:.0f} MiB ({sec:.0f}s)")
    floor = rows[(0, "imports")][0]
    f0, fN = args.rss_factors[0], args.rss_factors[-1]
    eb = args.rss_eval_batch or 128
    lines = ["## Peak resident memory of a training run (fresh process each)", "",
             f"erm_ft, fast profile, {args.fast_size}px, 4 steps (2 evaluations, eval batch {eb}"
             f"{': below the training step, so activations peak in the same place at every size' if args.rss_eval_batch else ''}"
             f"), target 0, "
             f"random EfficientNet-Lite0, "
             f"no teacher, workers 0; synthetic {args.rss_image}px PNG folders (in {SCRATCH}); peak RSS of the "
             f"process (VmHWM, read by the process itself at its end); the same for a process that only imports "
             f"torch and vl2v: {floor:.0f} MiB "
             f"(above imports = peak minus that). "
             + ("processes forked one at a time from a server that has only imported torch and vl2v (--quick). "
                if args.rss_fork else f"fresh interpreters, {args.rss_parallel} at a time. ") +
             "vs today = ratio to memory mode at the same size.", "",
             "| size | images | memory (today) | vs 1x | above imports | stream | vs 1x | above imports | "
             "stream vs today | seconds (memory / stream) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for f in args.rss_factors:
        m, s = rows[(f, "memory")], rows[(f, "stream")]
        lines.append(f"| {f}x | {args.rss_base * f} | {m[0]:.0f} MiB | {_fmt_ratio(m[0] / rows[(f0, 'memory')][0])} | "
                     f"{m[0] - floor:.0f} MiB | {s[0]:.0f} MiB | {_fmt_ratio(s[0] / rows[(f0, 'stream')][0])} | "
                     f"{s[0] - floor:.0f} MiB | {_fmt_ratio(s[0] / m[0])} | {m[1]:.0f} / {s[1]:.0f} |")
    rm = rows[(fN, "memory")][0] / rows[(f0, "memory")][0]
    rs = rows[(fN, "stream")][0] / rows[(f0, "stream")][0]
    lines += ["", f"Ratio {fN}x/{f0}x (peak RSS): memory {rm:.2f}, stream {rs:.2f} (target: stream within 1.15: "
                  f"{'met' if rs <= 1.15 else 'NOT met'}); above imports: memory "
                  f"{(rows[(fN, 'memory')][0] - floor) / max(1e-9, rows[(f0, 'memory')][0] - floor):.2f}, stream "
                  f"{(rows[(fN, 'stream')][0] - floor) / max(1e-9, rows[(f0, 'stream')][0] - floor):.2f}"]
    return lines


# --------------------------------------------------------------------------- section: teacher
def teacher_section(args, log) -> list[str]:
    script = Path(__file__).resolve().parent / "teacher_speed.py"
    lines = ["## Teacher cost (benchmarks/teacher_speed.py)", ""]
    if not script.exists():
        return lines + ["benchmarks/teacher_speed.py does not exist (yet): teacher cost not measured here."]
    cmd = [sys.executable, str(script), *shlex.split(args.teacher_args)]
    log(f"  running {' '.join(cmd)}")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.teacher_timeout,
                           env={**os.environ, "VL2V_PROGRESS": "0"})
    except subprocess.TimeoutExpired:
        return lines + [f"`{' '.join(cmd)}` did not finish in {args.teacher_timeout}s."]
    if p.returncode != 0:
        return lines + [f"`{' '.join(cmd)}` failed (exit {p.returncode}):", "", "```", p.stderr[-2000:].rstrip(), "```"]
    return lines + [p.stdout.rstrip()]


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for the test)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, from {','.join(SECTIONS)}")
    ap.add_argument("--steps", type=int, help="timed training steps per run, fast settings (default 8; quick 2)")
    ap.add_argument("--paper-steps", type=int, help="timed steps per run, paper settings (default 1 on CPU, 10 with "
                                                    "CUDA; quick 1)")
    ap.add_argument("--warmup", type=int, help="untimed steps first (default 1 on CPU, 5 with CUDA); always at "
                                               "least step 0 (an evaluation step); paper settings: 1 on CPU")
    ap.add_argument("--repeats", type=int, help="interleaved repeats, median reported (default 2; quick 1)")
    ap.add_argument("--views", type=int, default=4, help="stored views of the replaying adip row (default 4)")
    ap.add_argument("--students", help="comma-separated (default efficientnet_lite0 on CPU; "
                                       "resnet50,vit_base_patch16_224 with CUDA)")
    ap.add_argument("--workers", help="loader worker counts for the training rows (default 1,2 on CPU; 2,8 with CUDA)")
    ap.add_argument("--precision", action="store_true", help="also time bf16/compile variants on the CPU")
    ap.add_argument("--data", help="ROOT/domain/class/image folder (default: OfflinePACS if built, else synthetic)")
    ap.add_argument("--eval-passes", type=int, help="evaluation passes per run in the eval section (default 2)")
    ap.add_argument("--loader-batches", type=int, help="requests timed per loader measurement (default 8)")
    ap.add_argument("--rss-base", type=int, help="images at 1x in the rss section (default 150; quick 12)")
    ap.add_argument("--teacher-args", default="--no-zero-shot --repeats 2 --parity-images 64",
                    help="arguments for benchmarks/teacher_speed.py (default: '--no-zero-shot --repeats 2 "
                         "--parity-images 64', to keep the run short; pass '' for its own defaults)")
    ap.add_argument("--teacher-timeout", type=int, default=1200)
    ap.add_argument("--out", help="also write the Markdown report to this file")
    ap.add_argument("--rss-child", help=argparse.SUPPRESS)
    ap.add_argument("--rss-mode", help=argparse.SUPPRESS)
    ap.add_argument("--rss-size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rss-eval-batch", type=int, default=32,
                    help="eval batch of the rss runs (default 32, below the training step's batch: activations peak "
                         "in the training step at every size; 0 = the config's 128, whose 1x runs have splits smaller "
                         "than one batch and so a lower activation peak than 4x and 16x)")
    args = ap.parse_args(argv)
    if args.rss_child:
        rss_child(args)
        return 0

    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; choose from {','.join(SECTIONS)}")
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device here")
    q = args.quick
    args.steps = args.steps or (1 if q else (20 if cuda else 5))
    args.paper_steps = args.paper_steps or (10 if cuda and not q else 1)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda and not q else 1)
    args.paper_warmup = args.warmup if cuda else 1
    args.repeats = args.repeats or (1 if q else 2)
    args.eval_passes = args.eval_passes or 2
    args.loader_batches = args.loader_batches or (3 if q else 8)
    args.rss_base = args.rss_base or (12 if q else 150)
    args.rss_factors = [1, 16] if q else [1, 4, 16]
    args.rss_parallel = 2
    args.rss_fork = q
    args.rss_image = 64 if q else 256
    args.fast_size, args.fast_batch = (32, 4) if q else (128, 16)
    args.paper_size, args.paper_batch = (48, 8) if q else (224, 32)
    args.students = (args.students.split(",") if args.students else
                     (["resnet50", "vit_base_patch16_224"] if cuda else ["efficientnet_lite0"]))
    if args.workers:
        args.train_workers = [int(w) for w in args.workers.split(",")]
    elif cuda:
        from vl2v.data.loader import default_workers

        args.train_workers = sorted({2, default_workers(args.device)})
    else:
        args.train_workers = [1, 2]
    if cuda and q and "vit_base_patch16_224" in args.students:
        args.paper_size = 224  # the ViT's input size is fixed

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load0 = os.getloadavg()
    t_start = time.time()
    out: list[str] = [f"# vl2v data pipeline benchmark{' (--quick)' if q else ''}", ""]
    bench = None
    if any(s in sections for s in ("train", "eval", "loader")):
        if args.data:
            data_dir = Path(args.data)
        elif q:
            data_dir = make_folder(SCRATCH / "quick-train", 72, 64)
        elif OFFLINE_PACS.is_dir():
            data_dir = OFFLINE_PACS
        else:
            data_dir = make_folder(SCRATCH / "synthetic-train-1800", 1800, 256)
        bench = Bench(data_dir, args.device, 256, log)
        out += [f"data: `{data_dir}`, {len(bench.data.bank)} images in memory ({len(bench.data.domains)} domains, "
                f"target 0 = {bench.data.domains[0]}), loaded in {bench.load_s:.0f}s; students with random weights "
                f"(speed does not depend on them); teacher: a fixed random conv net (512-d, 32px; cached targets), "
                f"store in memory.", ""]
    try:
        for s in sections:
            t0 = time.time()
            log(f"section {s} ...")
            if s == "train":
                lines = train_section(bench, args, log)
            elif s == "eval":
                lines = eval_section(bench, args, log)
            elif s == "loader":
                lines = loader_section(bench, args, log)
            elif s == "rss":
                lines = rss_section(args, log)
            else:
                lines = teacher_section(args, log)
            out += lines + ["", f"({s}: {time.time() - t0:.0f}s)", ""]
            print("\n".join(lines + [""]), flush=True)
    finally:
        if bench is not None:
            bench.close()
    load1 = os.getloadavg()
    dev = torch.cuda.get_device_name(torch.device(args.device)) if cuda else (platform.processor() or platform.machine())
    footer = (f"{dev}; {os.cpu_count()} CPU cores, torch {torch.__version__} with {torch.get_num_threads()} threads; "
              f"1-min load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end "
              f"(other jobs share this machine when it is above 0); total {time.time() - t_start:.0f}s.")
    out.append(footer)
    print(footer, flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
