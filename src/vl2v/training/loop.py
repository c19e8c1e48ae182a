"""The one training loop every algorithm uses.

For one (algorithm, target domain, trial seed) it: builds the algorithm, runs
its stages with per-domain balanced minibatches from the source domains'
"in" splits, evaluates every ``eval_every`` steps (and at each stage's last
step) on every domain's "out" split and the target's "in" split, appends each
evaluation to ``results.jsonl`` with DomainBed's keys, keeps the best
source-validation checkpoint (restored before the next stage), optionally
averages the last stage with SWAD, and writes ``final.json`` and ``done``.

It never knows which algorithm it runs: algorithms declare their stages and
whether they need the teacher's image embeddings; everything else is here.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from collections import deque
from dataclasses import asdict, astuple, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from vl2v.config import TrainConfig
from vl2v.data.dataset import DomainData
from vl2v.data.loader import RenderRequest, render_stream
from vl2v.data.splits import seed_hash
from vl2v.data.transforms import AugParams, sample_aug_params
from vl2v.errors import ConfigError
from vl2v.methods import Algorithm, Batch, Stage, TaskContext, create_algorithm, get_algorithm
from vl2v.runs.layout import RunDir
from vl2v.runs.records import RunRecorder
from vl2v.runs.selection import select_record, summarize
from vl2v.students.registry import Student
from vl2v.teachers.prompts import class_name, prompts_for, text_classifier
from vl2v.teachers.store import view_id
from vl2v.training.checkpoint import load_state, load_weights, save_state, save_weights
from vl2v.training.distributed import all_reduce_sum, barrier, main_first, shard, wrap
from vl2v.training.distributed import info as dist_info
from vl2v.training.resources import SharedResources
from vl2v.training.swad import LossValley
from vl2v.utils.device import resolve_device
from vl2v.utils.io import atomic_write_json, atomic_write_text
from vl2v.utils.progress import bar


@dataclass(frozen=True)
class RunSpec:
    algorithm: str
    target: int
    trial_seed: int = 0
    hparams_seed: int = 0
    hparams: tuple[tuple[str, Any], ...] = ()  # explicit options (algo:key=value): the run folder's name and label
    #: drawn from the algorithm's search space by ``hparams_seed`` (vl2v.methods.search.random_hparams),
    #: explicit keys left out; the algorithm gets defaults <- drawn <- hparams
    drawn: tuple[tuple[str, Any], ...] = ()

    def options(self) -> dict[str, Any]:
        """The hyperparameters that differ from the defaults: the draw, then the explicit options over it."""
        return {**dict(self.drawn), **dict(self.hparams)}


class DomainSampler:
    """Per-domain shuffled epochs, deterministic from the seed and resumable."""

    def __init__(self, pools: dict[int, list[int]], batch_size: int, seed: int) -> None:
        self.pools = pools
        self.batch_size = batch_size
        self.rngs = {d: np.random.RandomState(seed_hash(seed, "sampler", d)) for d in pools}
        self.perm: dict[int, list[int]] = {d: [] for d in pools}
        self.pos: dict[int, int] = {d: 0 for d in pools}

    def next(self, d: int) -> list[int]:
        out: list[int] = []
        while len(out) < self.batch_size:
            if self.pos[d] >= len(self.perm[d]):
                self.perm[d] = [int(i) for i in self.rngs[d].permutation(len(self.pools[d]))]
                self.pos[d] = 0
            take = min(self.batch_size - len(out), len(self.perm[d]) - self.pos[d])
            out.extend(self.pools[d][j] for j in self.perm[d][self.pos[d]:self.pos[d] + take])
            self.pos[d] += take
        return out

    def state_dict(self) -> dict:
        return {"rng": {str(d): list(map(_np_state_to_list, [r.get_state()]))[0] for d, r in self.rngs.items()},
                "perm": {str(d): p for d, p in self.perm.items()}, "pos": {str(d): p for d, p in self.pos.items()}}

    def load_state_dict(self, s: dict) -> None:
        for d in self.pools:
            st = s["rng"][str(d)]
            self.rngs[d].set_state((st[0], np.array(st[1], dtype=np.uint32), int(st[2]), int(st[3]), float(st[4])))
            self.perm[d] = list(s["perm"][str(d)])
            self.pos[d] = int(s["pos"][str(d)])


def _np_state_to_list(st: tuple) -> list:
    return [st[0], [int(x) for x in st[1]], int(st[2]), int(st[3]), float(st[4])]


@dataclass
class _DomainPlan:
    """One domain's part of a training step: images, random choices, and the views to render."""

    d: int
    idx: list[int]
    choice: list  # stored-view indices, or AugParams of fresh augmentations
    online: bool = False
    needs_t: bool = False
    use_feats: bool = False
    rows: list[int] | None = None  # rows of the training-set caches (features, teacher targets)
    student: tuple[tuple[int, AugParams | None], ...] = ()  # views for the student, at its input size
    teacher: tuple[tuple[int, AugParams | None], ...] = ()  # views for an online teacher, at its size
    key: tuple = ()  # the global (unsharded) images and views of this part: what the stream digest hashes


@dataclass
class RunOutcome:
    run_dir: Path
    final: dict[str, Any]


def _spec_json(spec: RunSpec) -> dict[str, Any]:
    """``config.json``'s ``spec``; ``drawn`` only when something was drawn (hparams seed 0: as before the search)."""
    d = asdict(spec)
    if not spec.drawn:
        d.pop("drawn")
    return d


class Trainer:
    def __init__(self, spec: RunSpec, cfg: TrainConfig, res: SharedResources, make_student: Callable[[], Student],
                 run_dir: Path, args_record: dict[str, Any], student_key: tuple = (),
                 data: DomainData | None = None, teacher_encoder: Callable[[], Any] | None = None,
                 prepaid: dict[str, float] | None = None) -> None:
        cfg.validate()
        self.spec, self.cfg, self.res = spec, cfg, res
        self.run_dir = Path(run_dir)
        self.rd = RunDir(self.run_dir)
        self.data = data if data is not None else res.data  # same images as res.data; splits of this trial seed
        self.device = torch.device(resolve_device(cfg.device))
        self.info = get_algorithm(spec.algorithm)
        D = len(self.data.domains)
        if D < 2:
            raise ConfigError(f"leave-one-domain-out needs at least 2 domains; the dataset has {D}")
        if not 0 <= spec.target < D:
            raise ConfigError(f"target domain index {spec.target} out of range: the dataset has domains "
                             f"0..{D - 1} ({', '.join(self.data.domains)})")
        self.sources = [d for d in range(D) if d != spec.target]
        self.pools = {d: self.data.split_items(d, "in") for d in self.sources}
        self.train_indices = sorted(i for p in self.pools.values() for i in p)
        self.labels = self.data.labels
        self.args_record = args_record
        self.student_key = student_key
        self.make_student = make_student
        self.teacher_encoder = teacher_encoder
        self.seed = seed_hash(spec.trial_seed, spec.hparams_seed, spec.algorithm, spec.target)  # model init
        # teacher queries another process made for this run ahead of it (pay_teacher), counted as this run's
        # instead of the store reads that fetch them here
        self.prepaid = prepaid
        self.stream = cfg.data_stream_kind
        if (self.stream == "fresh" and cfg.teacher_mode == "cached" and self.info.uses_teacher_images
                and self.info.needs_training):
            raise ConfigError(f"{spec.algorithm} learns from the teacher's embedding of each view: a fresh data "
                              "stream needs --teacher-mode online (or use --data-stream stored)")

    # ------------------------------------------------------------ set-up
    def _prompt_names(self) -> list[str]:
        """Each trained class's name in the prompts: the resolved ``class_names`` of the config, else the
        folder's (the seen classes' only, when classes are held out)."""
        names = self._all_prompt_names()
        return names if self.data.seen is None else [names[c] for c in self.data.seen]

    def _all_prompt_names(self) -> list[str]:
        """Every class's prompt name, held-out classes included (``class_names`` covers every class)."""
        names = self.cfg.class_names
        classes = self.data.all_classes
        if names is None:
            return [class_name(c) for c in classes]
        if len(names) != len(classes):
            raise ConfigError(f"{len(names)} prompt class names for {len(classes)} classes")
        return list(names)

    def _novel_classifier(self) -> torch.Tensor:
        """The teacher's text classifier over every class, held-out ones included (novel-class benchmark)."""
        tpl = list(self.cfg.templates)
        emb = self.res.text_embeddings(prompts_for(self.data.all_classes, tpl, self._all_prompt_names()))
        return text_classifier(emb, len(self.data.all_classes), len(tpl))

    def _novel_target_items(self) -> list[int]:
        """The target's "in" split, every class (the novel-class benchmark's test images)."""
        return self.data.all_split_items(self.spec.target, "in")

    def _context(self) -> TaskContext:
        store = self.res.store
        text = None
        dim = None
        prompts = None
        self.prompt_names = self._prompt_names()
        if store is not None:
            tpl = list(self.cfg.templates)
            emb = self.res.text_embeddings(prompts_for(self.data.classes, tpl, self.prompt_names))
            text = text_classifier(emb, len(self.data.classes), len(tpl))
            dim = store.dim
            prompts = self.res.text_embeddings
        return TaskContext(num_classes=len(self.data.classes), class_names=list(self.data.classes),
                           prompt_names=list(self.prompt_names),
                           source_domains=[self.data.domains[d] for d in self.sources],
                           text_classifier=text, teacher_dim=dim, prompts=prompts,
                           teacher_encoder=self.teacher_encoder() if (self.info.needs_white_box and self.teacher_encoder) else None,
                           teacher_image_size=store.teacher.image_size if store else None,
                           schedule=self.cfg.schedule)

    def _teacher_images(self) -> None:
        """The teacher embeddings this run needs, through the store (paid once): every training view when the
        algorithm learns from them with a cached teacher, the evaluation views when the teacher itself predicts."""
        if self.info.uses_teacher_images and self.info.needs_training and self.cfg.teacher_mode == "cached":
            self.targets = self.res.teacher_targets(self.train_indices)  # every training view, paid once
        if not self.info.has_student:
            self.res.teacher_center(self._eval_indices())
            if self.data.novel:  # the teacher's zero-shot on the held-out classes' images too
                self.res.teacher_center(self._novel_target_items())
        if self.data.novel and self.res.store is not None and self.info.needs_teacher:
            self._novel_classifier()  # every class name's prompts, for the novel-class scores

    def pay_teacher(self) -> dict[str, float]:
        """Ask the teacher now for everything this run will ask it (prompt texts, training views, evaluation
        views) and return what that cost; a run given it as ``prepaid`` then reads the store only. Used by a
        parallel comparison: one process pays, in the order the runs would have, and worker processes train.
        Nothing for a finished run (it will not run again)."""
        store = self.res.store
        if store is None or self.rd.is_done():
            return {}
        t0 = store.stats.text_queries
        self._context()  # prompt texts: in the run's bill (teacher_bill), not in its store counters (queries)
        before = store.stats.as_dict()
        self._teacher_images()
        paid = {k: v - before.get(k, 0) for k, v in store.stats.as_dict().items()}
        paid["prompt_text_queries"] = before["text_queries"] - t0
        return paid

    def teacher_keys(self) -> tuple[set[tuple[str, str]], set[str]]:
        """The distinct teacher answers this run uses: ``(content hash, view id)`` image keys and prompt texts
        (none for an algorithm that does not use the teacher). With an online teacher the training views are
        drawn fresh every step and are not known ahead: only the evaluation views and texts are listed."""
        if self.res.store is None or not self.info.needs_teacher:
            return set(), set()
        texts = set(prompts_for(self.data.classes, list(self.cfg.templates), self._prompt_names()))
        if self.data.novel:  # the held-out classes' names are embedded for the novel-class scores
            texts |= set(prompts_for(self.data.all_classes, list(self.cfg.templates), self._all_prompt_names()))
        keys: set[tuple[str, str]] = set()
        hashes = self.data.bank.hashes
        if self.info.uses_teacher_images and self.info.needs_training and self.cfg.teacher_mode == "cached":
            keys.update((hashes[i], view_id(p)) for i in self.train_indices for p in self.res.view_list(i))
        if not self.info.has_student:
            keys.update((hashes[i], view_id(None)) for i in self._eval_indices())
            if self.data.novel:
                keys.update((hashes[i], view_id(None)) for i in self._novel_target_items())
        return keys, texts

    def teacher_need(self) -> dict[str, int]:
        """What this run would pay alone, with an empty store, whatever other runs paid before it."""
        keys, texts = self.teacher_keys()
        return {"image": len(keys), "text": len(texts)}

    def teacher_bill(self) -> dict[str, Any]:
        """What the run needed from the teacher (:meth:`teacher_need`) and what this process paid for it: the
        queries sent on the run's behalf here, plus those another process sent for it ahead (``prepaid``);
        ``store_hits``: needed answers that were already in the store. With an online teacher every step's
        fresh views are new queries, so the need is what was sent."""
        store = self.res.store
        now = store.stats.as_dict()
        pre = self.prepaid or {}
        paid = {"image": int(now["image_queries"] - self._bill0.get("image_queries", 0) + pre.get("image_queries", 0)),
                "text": int(now["text_queries"] - self._bill0.get("text_queries", 0) + pre.get("text_queries", 0)
                            + pre.get("prompt_text_queries", 0))}
        need = self.teacher_need()
        online = self.info.uses_teacher_images and self.cfg.teacher_mode == "online" and self.info.needs_teacher
        if online:
            need["image"] = paid["image"]
        n = max(1, len(self.train_indices))
        bill = {"needed": need, "paid": paid, "store_hits": {k: max(0, need[k] - paid[k]) for k in need},
                "needed_image_per_train_image": round(need["image"] / n, 4),
                "paid_image_per_train_image": round(paid["image"] / n, 4), "online": online}
        price = store.teacher.price()
        if price:  # a teacher sold per query: the same bill in money, at the price it states
            bill["price"] = price
            bill["cost"] = {part: round(bill[part]["image"] * price["image"] + bill[part]["text"] * price["text"], 6)
                            for part in ("needed", "paid")}
        return bill

    def warm_student_caches(self) -> None:
        """Compute now the pretrained student's cached features and frozen-prefix activations this run's stages
        will read (the same calls :meth:`_run_stage` and :meth:`evaluate` make), without training. A parallel
        comparison does this once in the parent and hands the caches to every worker
        (:meth:`SharedResources.save_features`), instead of each worker computing them again."""
        if (not (self.info.has_student and self.info.uses_registry_student) or self.rd.is_done()
                or self.stream != "stored"):
            return
        algo = create_algorithm(self.spec.algorithm, self._context(), self.make_student(), self.spec.options())
        algo.student.to(memory_format=torch.channels_last)
        evals = self._eval_indices()
        pristine = True
        for stage in (algo.stages() if algo.needs_training else []):
            algo.begin_stage(stage)
            if stage.backbone_frozen and pristine:
                self.res.frozen_features(algo.student, self.train_indices, "train", self.student_key)
                self.res.frozen_features(algo.student, evals, "eval", self.student_key)
            n = self._cacheable_prefix(algo, stage, pristine)
            if n:
                self.res.frozen_features(algo.student, self.train_indices, "train", self.student_key, prefix=n)
                self.res.frozen_features(algo.student, evals, "eval", self.student_key, prefix=n)
            pristine = pristine and stage.backbone_frozen

    def _eval_indices(self) -> list[int]:
        """Every image of every evaluation split, once, in order."""
        return sorted({i for d, w in self._eval_sets() for i in self.data.split_items(d, w)})

    def _eval_sets(self) -> list[tuple[int, str]]:
        sets = [(d, "out") for d in range(len(self.data.domains))] + [(self.spec.target, "in")]
        if self.cfg.eval_source_in:
            sets += [(d, "in") for d in self.sources]
        return sets

    # ---------------------------------------------------------- batches
    def _plan(self, algo: Algorithm, d: int, idx: list[int], use_feats: bool) -> _DomainPlan:
        """This rank's part of domain ``d``'s global minibatch ``idx``: the random choices, and what to render.

        The choices depend only on the data stream (``stored``: which of the K stored views; ``fresh``: new
        augmentation parameters), never on the algorithm: every algorithm draws the same ones (see
        :meth:`_reset_stream`). A teacher that is queried sees the same crop as the student, at its own size.
        Random choices are drawn for the whole global minibatch in the same order on every rank, then sliced:
        N ranks see exactly what one process with the same global batch sees.
        Rendering happens later, in loader workers (:meth:`_assemble` puts the batch together).
        """
        res = self.res
        needs_t = algo.uses_teacher_images
        stored = self.stream == "stored"
        if stored:  # replay stored views
            choice = torch.randint(0, res.n_views, (len(idx),), generator=self.gen).tolist()
            key = (d, tuple(idx), tuple(choice))
        else:  # a fresh augmentation per image
            choice = [sample_aug_params(self.gen, res.aug, res.data.bank.aspect(i)) for i in idx]
            key = (d, tuple(idx), tuple(astuple(c) for c in choice))
        idx, choice = shard(idx), shard(choice)
        online = needs_t and not stored  # fresh views: the teacher is queried on each (online mode, checked)
        plan = _DomainPlan(d, idx, choice, online=online, needs_t=needs_t, use_feats=use_feats, key=key)
        if online:
            plan.student = tuple(zip(idx, choice))
            plan.teacher = tuple(zip(idx, choice))
        elif stored:
            plan.rows = [self.train_pos[i] for i in idx]
            if not use_feats and not self._train_hidden:
                plan.student = tuple((i, res.view_list(i)[k]) for i, k in zip(idx, choice))
        else:
            plan.student = tuple(zip(idx, choice))
        return plan

    @staticmethod
    def _stream_role(stage: Stage) -> str:
        """Stages that see the same data stream in every algorithm: head/projection warm-ups on a frozen
        backbone (LP-FT's probe, ADiP's Align) and fine-tuning stages (ERM-FT, KD, RISE, ADiP's Distill)."""
        return "frozen" if stage.backbone_frozen else "tune"

    def _stream_record(self, stages: list[Stage]) -> dict[str, Any]:
        """What this run trains on, for ``config.json``: a reader checks that a comparison's runs match."""
        res = self.res
        return {"kind": self.stream, "views": res.views if self.stream == "stored" else None,
                "view_seed": res.view_seed if self.stream == "stored" else None, "augmentation": asdict(res.aug),
                "teacher_view": "the student's view (same crop and colour changes), at the teacher's input size",
                "stages": {st.name: {"role": self._stream_role(st), "seed": self._stream_seed(st)} for st in stages}}

    def _stream_seed(self, stage: Stage) -> int:
        return seed_hash(self.spec.trial_seed, "data-stream", self.spec.target, self._stream_role(stage))

    def _reset_stream(self, stage: Stage) -> None:
        """Start ``stage``'s data stream: the sampler and the view generator seeded by (trial seed, target,
        stage role) only, so every algorithm's stage of that role gets the same minibatches and views."""
        seed = self._stream_seed(stage)
        self.sampler = DomainSampler(self.pools, self.cfg.batch_size, seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.state.setdefault("stream", {})[stage.name] = {"role": self._stream_role(stage), "seed": seed,
                                                           "digest": "", "steps": 0}

    def _requests(self, plans: list[_DomainPlan]) -> RenderRequest:
        tsize = self.res.store.teacher.image_size if self.res.store is not None else 0
        groups = []
        for p in plans:
            groups.append(("student", self.input_size, p.student))
            groups.append(("teacher", tsize, p.teacher))
        return RenderRequest(tuple(groups))

    def _assemble(self, p: _DomainPlan, x: torch.Tensor | None, tx: torch.Tensor | None) -> Batch:
        b = Batch(y=self.labels[p.idx], domain=p.d)
        if x is not None:
            b.x = x.float().div_(255.0)
        if p.online:
            b.t_img = self.res.online_targets(tx.float().div_(255.0))
        elif p.rows is not None:
            if p.use_feats:
                b.feats = self.train_feats[p.rows, p.choice]  # [N_train, V, d] -> [B, d]
            elif self._train_hidden:
                b.hidden, b.hidden_stage = self.train_hidden[p.rows, p.choice], self._prefix_n
            if p.needs_t:
                b.t_img = self.targets[p.rows, p.choice]
        return b

    def _rng_state(self) -> dict:
        """What the data order depends on (the sampler and the augmentation generator), for checkpoints."""
        return {"sampler": copy.deepcopy(self.sampler.state_dict()), "gen": self.gen.get_state()}

    def _step_batches(self, algo: Algorithm, stage: Stage, start: int, use_feats: bool):
        """``(step, minibatches, rng state after drawing them)`` for steps ``start..stage.steps-1``.

        Plans are drawn here, in order; loader workers render them ahead of the step that uses them,
        so the sampler runs ahead too: the state a checkpoint must save (the state right after drawing
        that step's batch) travels with each step instead of being read from the sampler.
        """
        pending: deque = deque()

        def requests():
            for s in range(start, stage.steps):
                plans = [self._plan(algo, d, self.sampler.next(d), use_feats) for d in self.sources]
                pending.append((s, plans, self._rng_state() if self._is_eval_step(s, stage) else None))
                yield self._requests(plans)

        # cached features, or stored views served from the cached frozen prefix: nothing to render
        workers = 0 if (use_feats or self._train_hidden) else self.res.workers
        for rendered in render_stream(self.data.bank, requests(), workers, pin_memory=self.device.type == "cuda"):
            s, plans, rng = pending.popleft()
            rec = self.state["stream"][stage.name]  # a running digest of what this stage trained on
            rec["digest"] = hashlib.sha256((rec["digest"] + repr([p.key for p in plans])).encode()).hexdigest()
            rec["steps"] += 1
            mbs = [self._to_device(self._assemble(p, rendered[2 * k], rendered[2 * k + 1])) for k, p in enumerate(plans)]
            yield s, mbs, rng

    def _cacheable_prefix(self, algo: Algorithm, stage: Stage, backbone_pristine: bool) -> int:
        """How many leading student stages this (fine-tuning) stage can take from a cache: they are frozen,
        still pretrained (no earlier stage trained them) and their BatchNorm is in eval mode; 0 = none."""
        n = self.cfg.schedule.freeze_stages
        st = algo.student
        if (not self.cfg.cache_prefix or n <= 0 or stage.backbone_frozen or not backbone_pristine or st is None
                or not algo.info.uses_registry_student or not getattr(st, "splittable", False) or not st.freeze_bn):
            return 0
        if any(p.requires_grad for m in st.stages()[:n] for p in m.parameters()):
            return 0
        if not self.res.prefix_cache_fits(st, n, len(self.train_indices) + len(self.data.bank)):
            return 0
        return n

    def _autocast(self):
        """bf16 autocast for forward passes when ``amp`` says so (auto: with CUDA only)."""
        on = self.cfg.amp == "bf16" or (self.cfg.amp == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def _is_eval_step(self, s: int, stage: Stage) -> bool:
        return s % self.cfg.eval_every == 0 or s == stage.steps - 1

    def _to_device(self, b: Batch) -> Batch:
        dev = self.device
        if b.x is not None:
            b.x = b.x.to(dev).contiguous(memory_format=torch.channels_last)
        if b.hidden is not None:
            b.hidden = b.hidden.to(dev).contiguous(memory_format=torch.channels_last)
        if b.feats is not None:
            b.feats = b.feats.to(dev)
        if b.t_img is not None:
            b.t_img = b.t_img.to(dev)
        b.y = b.y.to(dev)
        return b

    # ------------------------------------------------------------ eval
    @torch.no_grad()
    def _logits(self, algo: Algorithm, idx: list[int], use_feats: bool) -> torch.Tensor:
        logits = []
        bs = self.cfg.eval_batch_size
        for s in range(0, len(idx), bs):
            chunk = idx[s:s + bs]
            b = Batch(y=self.labels[chunk])
            if not algo.has_student:
                b.t_img = self.res.teacher_center(chunk)
            elif use_feats:
                b.feats = self.res.frozen_features(algo.student, chunk, "eval", self.student_key)
            elif self._prefix_n:
                b.hidden = self.res.frozen_features(algo.student, chunk, "eval", self.student_key, prefix=self._prefix_n)
                b.hidden_stage = self._prefix_n
            else:
                continue  # rendered below, in parallel
            with self._autocast():
                logits.append(algo.predict_batch(self._to_device(b)).float().cpu())
        if algo.has_student and not use_feats and not self._prefix_n:
            for s, x in zip(range(0, len(idx), bs), self.res.eval_batches(idx, self.input_size, bs)):
                b = Batch(y=self.labels[idx[s:s + bs]], x=x.float().div_(255.0))
                with self._autocast():
                    logits.append(algo.predict_batch(self._to_device(b)).float().cpu())
        return torch.cat(logits) if logits else torch.empty(0, len(self.data.classes))

    @torch.no_grad()
    def evaluate(self, algo: Algorithm, use_feats: bool) -> dict[str, float]:
        """Accuracy and cross-entropy on every evaluation split (sharded over ranks, then summed)."""
        algo.eval()
        dist = dist_info()
        sets = self._eval_sets()
        sums = torch.zeros(len(sets), 3, dtype=torch.float64)  # correct, loss sum, count
        for k, (d, which) in enumerate(sets):
            idx = self.data.split_items(d, which)[dist.rank::dist.world_size]
            lg = self._logits(algo, idx, use_feats)
            y = self.labels[idx]
            if len(idx):
                sums[k, 0] = float((lg.argmax(dim=-1) == y).sum())
                sums[k, 1] = float(F.cross_entropy(lg, y, reduction="sum"))
                sums[k, 2] = len(idx)
        all_reduce_sum(sums)
        out: dict[str, float] = {}
        for k, (d, which) in enumerate(sets):
            n = float(sums[k, 2])
            out[f"env{d}_{which}_acc"] = float(sums[k, 0]) / n if n else float("nan")
            out[f"env{d}_{which}_loss"] = float(sums[k, 1]) / n if n else float("nan")
        out["val_acc"] = float(np.mean([out[f"env{d}_out_acc"] for d in self.sources]))
        out["val_loss"] = float(np.mean([out[f"env{d}_out_loss"] for d in self.sources]))
        algo.train()
        return out

    @torch.no_grad()
    def _novel_scores(self, algo: Algorithm, checkpoint: str) -> dict[str, Any]:
        """The novel-class benchmark's scores of ``algo`` on the target's "in" split (every class): seen classes
        among the seen names, held-out classes among the held-out names, and every image among every name (the
        generalised setting). Only a model that predicts by comparing with class text embeddings (its ``text``
        buffer: ADiP, SD, the teacher's zero-shot) can name a class it never trained on; for the others the
        novel scores are None."""
        from vl2v.training.novel import novel_class_scores

        data = self.data
        out: dict[str, Any] = {"fold": (self.args_record.get("novel_classes") or {}).get("fold"),
                               "held_out": [data.all_classes[c] for c in data.novel],
                               "seen_classes": list(data.classes), "checkpoint": checkpoint}
        text = getattr(algo, "text", None)
        idx = self._novel_target_items()
        if isinstance(text, torch.Tensor):
            algo.eval()
            algo.text = self._novel_classifier().to(text)
            try:
                with torch.no_grad():
                    logits = self._logits(algo, idx, use_feats=False)
            finally:
                algo.text = text
                algo.train()
            if logits.shape[-1] == len(data.all_classes):
                return {**out, **novel_class_scores(logits, data.all_labels[idx], list(data.seen or ()), data.novel)}
        return {**out, "text_head": False, "note": f"{self.info.name} predicts with a classifier over its training "
                "classes: it cannot name a class it never saw"}

    def _write_predictions(self, algo: Algorithm, path: Path) -> None:
        """Per-image predictions of the selected model on the target's "in" split (confusion matrices, mistakes)."""
        algo.eval()
        idx = self.data.split_items(self.spec.target, "in")
        logits = self._logits(algo, idx, use_feats=False)
        p = logits.softmax(-1)
        recs = self.res.data.bank.records
        # margin: log-probability gap of the predicted over the true class (0 when right); unlike the softmax
        # confidence it does not saturate at 1, so the report can rank confident mistakes
        items = [{"path": recs[i].path, "label": int(self.labels[i]), "pred": int(p[j].argmax()),
                  "conf": round(float(p[j].max()), 5),
                  "margin": round(float(logits[j, p[j].argmax()] - logits[j, int(self.labels[i])]), 4)}
                 for j, i in enumerate(idx)]
        atomic_write_json(path, {"domain": self.data.domains[self.spec.target], "split": "in",
                                 "classes": self.data.classes, "root": str(self.data.scan.root), "items": items})

    def run(self, resume: bool = False) -> RunOutcome:
        cfg, spec, res = self.cfg, self.spec, self.res
        run_dir, rd = self.run_dir, self.rd
        self.main = dist_info().is_main
        if rd.is_done():
            return RunOutcome(run_dir, rd.final())
        if cfg.batch_size % dist_info().world_size:
            raise ConfigError(f"the global batch ({cfg.batch_size} per domain) must divide evenly over "
                              f"{dist_info().world_size} processes")
        if resume and rd.last_state.exists() and rd.has_config():
            old = rd.config().get("args", {}).get("teacher_identity")
            new = self.args_record.get("teacher_identity")
            if old != new:
                raise ConfigError(f"{run_dir} was started with teacher {old!r} but the teacher is now {new!r}; "
                                  "resuming would mix two teachers' targets. Use the original teacher, or a new --out.")
        if self.main:
            run_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(self.seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        self._bill0 = res.store.stats.as_dict() if res.store is not None else {}  # the run's bill counts from here
        with main_first():  # rank 0 pays for the text embeddings, the others read them from the store
            ctx = self._context()
        student = self.make_student() if (self.info.has_student and self.info.uses_registry_student) else None
        algo = create_algorithm(spec.algorithm, ctx, student, spec.options()).to(self.device)
        if algo.student is not None:
            algo.student.to(memory_format=torch.channels_last)
            if cfg.compile:
                algo.student.compile()  # in place: state_dict keys stay as they are
        self.input_size = algo.image_size or cfg.image_size
        stages = algo.stages() if algo.needs_training else []
        self._n_stages = len(stages)
        recorder = RunRecorder(run_dir, args={**self.args_record, "algorithm": self.info.name,
                                              "test_envs": [spec.target], "trial_seed": spec.trial_seed,
                                              "hparams_seed": spec.hparams_seed, "output_dir": str(run_dir)},
                               hparams={**asdict(algo.hparams), **{f"schedule_{k}": v for k, v in asdict(cfg.schedule).items()},
                                        "batch_size": cfg.batch_size, "image_size": self.input_size,
                                        "teacher_mode": cfg.teacher_mode, "views": res.views, "swad": cfg.swad,
                                        "data_stream": self.stream},
                               enabled=self.main)
        if self.main:
            atomic_write_json(rd.config_json, {
                "spec": _spec_json(spec), "train": _jsonable(asdict(cfg)), "args": recorder.args, "hparams": recorder.hparams,
                "stages": [asdict(s) for s in stages], "domains": self.data.domains, "classes": self.data.classes,
                "prompts": {"class_names": self.prompt_names, "templates": list(cfg.templates)},
                "input_size": self.input_size, "world_size": dist_info().world_size,
                "data_stream": self._stream_record(stages)})

        store = res.store
        self.stats0 = store.stats.as_dict() if store else {}
        self.t_start = time.time()
        self.train_pos = {i: r for r, i in enumerate(self.train_indices)}
        with main_first():  # teacher queries: rank 0 asks and stores, the other ranks read
            self._teacher_images()
        if store is not None and self.prepaid is not None:
            self.stats0 = {k: v - self.prepaid.get(k, 0) for k, v in store.stats.as_dict().items()}
        self._prefix_n = 0  # leading student stages served from a cache in the current stage
        self._train_hidden = False  # training steps of the current stage start from those cached activations
        self.state = {"global_step": 0, "stage_index": 0, "stage_step": 0, "best": None, "stage_best": None,
                      "loss_sum": 0.0, "loss_n": 0, "elapsed": 0.0}
        self.sampler = DomainSampler(self.pools, cfg.batch_size, self.seed)
        resume_state = load_state(rd.last_state) if resume and rd.last_state.exists() else None
        if resume_state is not None:
            check_compatible(resume_state["algorithm"], algo, rd.last_state)
            algo.load_state_dict(resume_state["algorithm"])
            self.state.update(resume_state["loop"])
            self.sampler.load_state_dict(resume_state["sampler"])
            self.gen.set_state(resume_state["gen"])
            torch.set_rng_state(resume_state["torch_rng"])
            recorder.truncate_after(self.state["global_step"] - 1)
            self.t_start -= self.state["elapsed"]
        else:
            recorder.truncate_after(-1)  # a fresh start drops records of an interrupted attempt
        self._stage_best_mem = None

        if not stages:  # zero-shot and other training-free algorithms: one evaluation
            recorder.write(step=0, stage="none", stage_step=0, loss=None, evals=self.evaluate(algo, use_feats=False),
                           wall=time.time() - self.t_start, queries=_diff(store, self.stats0))
        swad: LossValley | None = None
        backbone_pristine = True
        for si, stage in enumerate(stages):
            if si >= self.state["stage_index"]:
                swad = self._run_stage(algo, si, stage, stages, backbone_pristine, recorder, resume_state)
            backbone_pristine = backbone_pristine and stage.backbone_frozen
        return self._finish(algo, stages, swad, recorder)

    def _run_stage(self, algo: Algorithm, si: int, stage: Stage, stages: list[Stage], backbone_pristine: bool,
                   recorder: RunRecorder, resume_state: dict | None) -> LossValley | None:
        cfg, state = self.cfg, self.state
        resuming = resume_state is not None and si == state["stage_index"] and state["stage_step"] > 0
        algo.begin_stage(stage)
        if resuming and algo.optimizer is not None and resume_state.get("optimizer"):
            algo.optimizer.load_state_dict(resume_state["optimizer"])
        model = wrap(algo, self.device)  # DistributedDataParallel when data-parallel
        if not resuming:  # a resumed stage continues the stream it saved
            self._reset_stream(stage)
        use_feats = stage.backbone_frozen and backbone_pristine and self.stream == "stored"
        if use_feats:
            self.train_feats = self.res.frozen_features(algo.student, self.train_indices, "train", self.student_key)
        self._prefix_n = self._cacheable_prefix(algo, stage, backbone_pristine)
        # stored views (replayed, not freshly augmented) can start from cached activations too
        self._train_hidden = bool(self._prefix_n and self.stream == "stored")
        if self._train_hidden:
            self.train_hidden = self.res.frozen_features(algo.student, self.train_indices, "train", self.student_key,
                                                         prefix=self._prefix_n)
        last_stage = si == len(stages) - 1
        swad = LossValley(algo, cfg.swad_cfg) if (cfg.swad and last_stage and not stage.backbone_frozen) else None
        if swad is not None and resuming and resume_state.get("swad"):
            swad.load_state_dict(resume_state["swad"])
        pbar = bar(stage.steps, desc=f"{self.spec.algorithm}/{self.data.domains[self.spec.target]}/{stage.name}",
                   unit="step", disable=not self.main)
        pbar.update(state["stage_step"])
        algo.train()
        t_stage = time.time()
        for s, mbs, rng in self._step_batches(algo, stage, state["stage_step"], use_feats):
            logs = algo.update(mbs, model, autocast=self._autocast())
            state["loss_sum"] += logs.get("loss", 0.0)
            state["loss_n"] += 1
            if swad is not None:
                swad.observe(algo, state["global_step"])
            pbar.update(1)
            if self._is_eval_step(s, stage):
                self._evaluate_and_checkpoint(algo, si, stage, s, use_feats, swad, recorder, logs, pbar, rng,
                                              last_stage)
            else:
                state["global_step"] += 1
                state["stage_step"] = s + 1
        pbar.close()
        state.setdefault("stage_seconds", {})
        state["stage_seconds"][stage.name] = state["stage_seconds"].get(stage.name, 0.0) + time.time() - t_stage
        if not last_stage:  # the next stage starts from this stage's best checkpoint
            best = self._stage_best_mem
            path = self.rd.stage_best(si)
            if best is None and path.exists():
                best = load_weights(path)[0]
            if best is not None:
                algo.load_state_dict(best)
            if state["stage_best"] is not None:  # which checkpoint the next stage started from, for final.json
                state.setdefault("stage_selected", {})[stage.name] = dict(state["stage_best"])
        state.update(stage_index=si + 1, stage_step=0, stage_best=None)
        self._stage_best_mem = None
        return swad

    def _evaluate_and_checkpoint(self, algo: Algorithm, si: int, stage: Stage, s: int, use_feats: bool,
                                 swad: LossValley | None, recorder: RunRecorder, logs: dict, pbar, rng: dict,
                                 last_stage: bool = True) -> None:
        cfg, state, rd = self.cfg, self.state, self.rd
        ev = self.evaluate(algo, use_feats)
        # mean training loss since the last evaluation, over all ranks' shards
        loss_sum = float(all_reduce_sum(torch.tensor([state["loss_sum"]], dtype=torch.float64))) / dist_info().world_size
        loss = loss_sum / max(1, state["loss_n"])
        state["loss_sum"], state["loss_n"] = 0.0, 0
        step = state["global_step"]
        recorder.write(step=step, stage=stage.name, stage_step=s, loss=loss, evals=ev, wall=time.time() - self.t_start,
                       queries=_diff(self.res.store, self.stats0), extra=logs)
        pbar.set_postfix(loss=f"{loss:.3f}", val=f"{ev['val_acc']:.3f}", tgt=f"{ev[f'env{self.spec.target}_in_acc']:.3f}")
        if swad is not None:
            swad.close_segment(ev["val_loss"], step)
        save = cfg.save_checkpoints and self.main
        # a non-final stage's checkpoints compete for its best only from stage step `stage_select_min_step` on
        # (the authors' --model_save); its last evaluation always does, so a shorter stage still has a best
        eligible = last_stage or s >= cfg.stage_select_min_step or s == stage.steps - 1
        if eligible and (state["stage_best"] is None or ev["val_acc"] > state["stage_best"]["val_acc"]):
            state["stage_best"] = {"step": step, "stage_step": s, "val_acc": ev["val_acc"]}
            self._stage_best_mem = copy.deepcopy(algo.state_dict())
            if save:
                save_weights(rd.stage_best(si), algo.state_dict(), {"step": step, "stage": stage.name})
        candidate = self.cfg.select_stage == "all" or si == self._n_stages - 1
        if candidate and (state["best"] is None or ev["val_acc"] > state["best"]["val_acc"]):
            state["best"] = {"step": step, "val_acc": ev["val_acc"]}
            if save:
                save_weights(rd.best, algo.state_dict(),
                             {"step": step, "stage": stage.name, "val_acc": ev["val_acc"]})
        state["global_step"] = step + 1
        state["stage_step"] = s + 1
        state["elapsed"] = time.time() - self.t_start
        if save:
            save_state(rd.last_state, {
                "algorithm": algo.state_dict(), "loop": _plain(state),
                "optimizer": algo.optimizer.state_dict() if algo.optimizer else {},
                "sampler": rng["sampler"], "gen": rng["gen"], "torch_rng": torch.get_rng_state(),
                "swad": swad.state_dict() if swad is not None else None})

    def _finish(self, algo: Algorithm, stages: list[Stage], swad: LossValley | None, recorder: RunRecorder) -> RunOutcome:
        cfg, spec, run_dir, rd = self.cfg, self.spec, self.run_dir, self.rd
        ckpt = rd.checkpoints
        store = self.res.store
        save = cfg.save_checkpoints and self.main
        final: dict[str, Any] = {"run_dir": str(run_dir), "algorithm": self.info.name, "target": spec.target,
                                 "target_name": self.data.domains[spec.target], "trial_seed": spec.trial_seed}
        barrier()  # rank 0 has written every record
        records = recorder.records()
        chosen = select_record(records, stages=cfg.select_stage)
        if chosen is not None:
            final["selected"] = summarize(chosen)
            final["oracle"] = summarize(select_record(records, "oracle"), "oracle")
            final["selection"] = {"method": "training_domain", "stages": cfg.select_stage}
        if save and stages:
            save_weights(rd.last_weights, algo.state_dict(), {"step": self.state["global_step"] - 1})
        if swad is not None:
            summary = swad.summary()
            if swad.apply_to(algo):
                ev = self.evaluate(algo, use_feats=False)
                final["swad"] = {**summarize({**ev, "args": recorder.args, "step": self.state["global_step"], "stage": "swad"}),
                                 **summary}
                if save:
                    save_weights(rd.swad, algo.state_dict(), {"swad": summary})
            else:
                final["swad"] = {"note": "SWAD found no loss valley (validation loss never converged); not averaged", **summary}
        if self.main:
            checkpoint = "last"
            if cfg.save_checkpoints and rd.best.exists():
                os.replace(rd.best, rd.model)
                algo.load_state_dict(load_weights(rd.model)[0])
                self._write_predictions(algo, rd.predictions)
                checkpoint = "selected"
            elif not stages:
                self._write_predictions(algo, rd.predictions)
                checkpoint = "selected"
            if self.data.novel:
                final["novel"] = self._novel_scores(algo, checkpoint)
        final["queries"] = _diff(store, self.stats0)
        if store is not None:
            final["teacher_bill"] = self.teacher_bill()
        if stages:  # per stage: the stream's seed and a digest of every (image, view) it trained on, in order
            final["data_stream"] = {"kind": self.stream, "views": self.res.views if self.stream == "stored" else None,
                                    "stages": self.state.get("stream", {})}
        final["stage_seconds"] = {k: round(v, 2) for k, v in self.state.get("stage_seconds", {}).items()}
        if self.state.get("stage_selected"):  # the checkpoint each non-final stage handed to the next
            final["stage_selected"] = self.state["stage_selected"]
        final["n_train_images"] = len(self.train_indices)
        final["wall_time"] = time.time() - self.t_start
        if self.main:
            atomic_write_json(rd.final_json, final)
            # the run is final: drop resume state, per-stage bests and temp files of interrupted writes
            if ckpt.is_dir():
                for p in [rd.last_state, *rd.stage_bests(), *rd.temp_files()]:
                    if p.exists():
                        p.unlink()
                if not any(ckpt.iterdir()):
                    ckpt.rmdir()
            atomic_write_text(rd.done, "done")
        barrier()
        return RunOutcome(run_dir, final)


def check_compatible(state: dict[str, torch.Tensor], algo: Algorithm, source: Path) -> None:
    """Refuse, before any work, a checkpoint whose tensors do not fit the model (e.g. another teacher's size)."""
    own = algo.state_dict()
    missing = [k for k in own if k not in state]
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape]
    if bad or missing:
        what = "; ".join(f"{k} is {a} in the checkpoint but {b} now" for k, a, b in bad[:3])
        hint = (" The teacher's embedding size differs from the one the projection was trained for."
                if any(k.startswith(("projection", "text")) for k, _, _ in bad) else "")
        raise ConfigError(f"checkpoint {source} does not fit this model: {what or f'missing {missing[:3]}'}.{hint}")


def _diff(store, stats0: dict) -> dict[str, float]:
    if store is None:
        return {}
    now = store.stats.as_dict()
    return {k: now[k] - stats0.get(k, 0) for k in now}


def _plain(state: dict) -> dict:
    return json.loads(json.dumps(state))


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))
