"""The training data stream: which images and views go into each minibatch, and what it is built from.

For each training step :class:`DataStream` draws, per source domain, the images (:class:`DomainSampler`:
per-domain shuffled epochs) and the random choice of their views (which of the K stored views, or fresh
augmentation parameters), has loader workers render what must be rendered
(:func:`~vl2v.data.loader.render_stream`), and assembles each domain's :class:`~vl2v.methods.Batch` from the
rendered pixels or from the run's caches (the pretrained student's features, its frozen prefix's
activations, the cached teacher targets).

Each stage's stream is seeded by (trial seed, target, stage role) only, never by the algorithm
(:meth:`DataStream.reset`): every algorithm's stage of a role trains on the same minibatches and views. A
running digest of what each stage drew goes into ``final.json``. All randomness is drawn here, in the main
process, in step order; the sampler and the view generator are what a checkpoint saves
(:meth:`DataStream.rng_state`) to resume the stream where it stopped.
"""

from __future__ import annotations

import copy
import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, astuple, dataclass
from typing import Any

import numpy as np
import torch

from vl2v.data.dataset import DomainData
from vl2v.data.loader import RenderRequest, render_stream
from vl2v.data.splits import seed_hash
from vl2v.data.transforms import AugParams, sample_aug_params
from vl2v.methods import Algorithm, Batch, Stage
from vl2v.training.distributed import shard
from vl2v.training.resources import SharedResources
from vl2v.training.state import StreamRecord


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
class DomainPlan:
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


#: ``(stage step, one minibatch per source domain, data-order state after drawing them or None)``
StepBatches = tuple[int, list[Batch], dict[str, Any] | None]


def to_device(b: Batch, dev: torch.device) -> Batch:
    """``b``'s tensors on ``dev`` (images and activations channels-last), in place."""
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


def stream_role(stage: Stage) -> str:
    """Stages that see the same data stream in every algorithm: head/projection warm-ups on a frozen
    backbone (LP-FT's probe, ADiP's Align) and fine-tuning stages (ERM-FT, KD, RISE, ADiP's Distill)."""
    return "frozen" if stage.backbone_frozen else "tune"


class DataStream:
    """The source domains' training minibatches of one run, step after step (see the module docstring).

    Set by the trainer: :attr:`input_size` once the algorithm is built, :attr:`targets` when the teacher's
    answers are cached, and per stage :meth:`use_caches`.
    """

    def __init__(self, data: DomainData, res: SharedResources, pools: dict[int, list[int]],
                 train_indices: list[int], batch_size: int, kind: str, trial_seed: int, target: int,
                 device: torch.device, seed: int) -> None:
        self.data, self.res = data, res
        self.pools = pools  # per source domain, in order: its "in" split
        self.sources = list(pools)
        self.batch_size = batch_size
        self.kind = kind  # "stored": replay the K stored views; "fresh": a new augmentation per image and step
        self.trial_seed, self.target = trial_seed, target
        self.device = device
        self.train_pos = {i: r for r, i in enumerate(train_indices)}  # image -> row of the training-set caches
        self.input_size = 0  # the student's input side
        self.targets: torch.Tensor | None = None  # cached teacher targets of every training view [N_train, V, d]
        # the current stage's caches: features of the pretrained student [N_train, V, d] (a frozen backbone),
        # or the activations after its first `prefix_n` (frozen) stages, for stored views
        self.feats: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None
        self.prefix_n = 0
        self.sampler = DomainSampler(pools, batch_size, seed)  # the current stage's images (reseeded per stage)
        self.gen = torch.Generator().manual_seed(seed)  # the current stage's view choices

    # ------------------------------------------------------------ seeds and state
    def start(self, seed: int) -> None:
        """The sampler and view generator a run starts with (every stage then reseeds them, or a checkpoint
        restores them)."""
        self.sampler = DomainSampler(self.pools, self.batch_size, seed)
        self.gen = torch.Generator().manual_seed(seed)

    def seed(self, stage: Stage) -> int:
        return seed_hash(self.trial_seed, "data-stream", self.target, stream_role(stage))

    def reset(self, stage: Stage) -> StreamRecord:
        """Start ``stage``'s data stream: the sampler and the view generator seeded by (trial seed, target,
        stage role) only, so every algorithm's stage of that role gets the same minibatches and views.
        Returns the stage's new stream record (the loop state keeps it)."""
        seed = self.seed(stage)
        self.sampler = DomainSampler(self.pools, self.batch_size, seed)
        self.gen = torch.Generator().manual_seed(seed)
        return StreamRecord(role=stream_role(stage), seed=seed, digest="", steps=0)

    def rng_state(self) -> dict[str, Any]:
        """What the data order depends on (the sampler and the augmentation generator), for checkpoints."""
        return {"sampler": copy.deepcopy(self.sampler.state_dict()), "gen": self.gen.get_state()}

    def load_rng_state(self, sampler: dict, gen: torch.Tensor) -> None:
        """Continue the stream a checkpoint saved (:meth:`rng_state`'s two parts)."""
        self.sampler.load_state_dict(sampler)
        self.gen.set_state(gen)

    def use_caches(self, feats: torch.Tensor | None, hidden: torch.Tensor | None, prefix_n: int) -> None:
        """Where the next stage's minibatches come from besides rendered pixels: the pretrained student's
        cached features (``feats``), or its first ``prefix_n`` stages' cached activations (``hidden``)."""
        self.feats, self.hidden, self.prefix_n = feats, hidden, prefix_n

    def record(self, stages: list[Stage]) -> dict[str, Any]:
        """What this run trains on, for ``config.json``: a reader checks that a comparison's runs match."""
        res, stored = self.res, self.kind == "stored"
        return {"kind": self.kind, "views": res.views if stored else None,
                "view_seed": res.view_seed if stored else None, "augmentation": asdict(res.aug),
                "teacher_view": "the student's view (same crop and colour changes), at the teacher's input size",
                "stages": {st.name: {"role": stream_role(st), "seed": self.seed(st)} for st in stages}}

    # ------------------------------------------------------------ batches
    def batches(self, algo: Algorithm, stage: Stage, start: int, record: StreamRecord,
                snapshot_at: Callable[[int], bool]) -> Iterator[StepBatches]:
        """``(step, minibatches, rng state after drawing them)`` for steps ``start..stage.steps-1``; the rng
        state only at the steps ``snapshot_at`` names (those a checkpoint follows), else None.

        Plans are drawn here, in order; loader workers render them ahead of the step that uses them,
        so the sampler runs ahead too: the state a checkpoint must save (the state right after drawing
        that step's batch) travels with each step instead of being read from the sampler. ``record`` (the
        stage's in the loop state) gets a running digest of every step's images and views.
        """
        pending: deque = deque()
        use_feats = self.feats is not None

        def requests():
            for s in range(start, stage.steps):
                plans = [self.plan(algo, d, self.sampler.next(d), use_feats) for d in self.sources]
                pending.append((s, plans, self.rng_state() if snapshot_at(s) else None))
                yield self._requests(plans)

        # cached features, or stored views served from the cached frozen prefix: nothing to render
        workers = 0 if (use_feats or self.hidden is not None) else self.res.workers
        for rendered in render_stream(self.data.bank, requests(), workers, pin_memory=self.device.type == "cuda"):
            s, plans, rng = pending.popleft()
            record["digest"] = hashlib.sha256((record["digest"] + repr([p.key for p in plans])).encode()).hexdigest()
            record["steps"] += 1
            mbs = [to_device(self._assemble(p, rendered[2 * k], rendered[2 * k + 1]), self.device)
                   for k, p in enumerate(plans)]
            yield s, mbs, rng

    def plan(self, algo: Algorithm, d: int, idx: list[int], use_feats: bool) -> DomainPlan:
        """This rank's part of domain ``d``'s global minibatch ``idx``: the random choices, and what to render.

        The choices depend only on the data stream (``stored``: which of the K stored views; ``fresh``: new
        augmentation parameters), never on the algorithm: every algorithm draws the same ones (see
        :meth:`reset`). A teacher that is queried sees the same crop as the student, at its own size.
        Random choices are drawn for the whole global minibatch in the same order on every rank, then sliced:
        N ranks see exactly what one process with the same global batch sees.
        Rendering happens later, in loader workers (:meth:`_assemble` puts the batch together).
        """
        res = self.res
        needs_t = algo.uses_teacher_images
        stored = self.kind == "stored"
        if stored:  # replay stored views
            choice = torch.randint(0, res.n_views, (len(idx),), generator=self.gen).tolist()
            key = (d, tuple(idx), tuple(choice))
        else:  # a fresh augmentation per image
            choice = [sample_aug_params(self.gen, res.aug, res.data.bank.aspect(i)) for i in idx]
            key = (d, tuple(idx), tuple(astuple(c) for c in choice))
        idx, choice = shard(idx), shard(choice)
        online = needs_t and not stored  # fresh views: the teacher is queried on each (online mode, checked)
        plan = DomainPlan(d, idx, choice, online=online, needs_t=needs_t, use_feats=use_feats, key=key)
        if online:
            plan.student = tuple(zip(idx, choice))
            plan.teacher = tuple(zip(idx, choice))
        elif stored:
            plan.rows = [self.train_pos[i] for i in idx]
            if not use_feats and self.hidden is None:
                plan.student = tuple((i, res.view_list(i)[k]) for i, k in zip(idx, choice))
        else:
            plan.student = tuple(zip(idx, choice))
        return plan

    def _requests(self, plans: list[DomainPlan]) -> RenderRequest:
        tsize = self.res.store.teacher.image_size if self.res.store is not None else 0
        groups = []
        for p in plans:
            groups.append(("student", self.input_size, p.student))
            groups.append(("teacher", tsize, p.teacher))
        return RenderRequest(tuple(groups))

    def _assemble(self, p: DomainPlan, x: torch.Tensor | None, tx: torch.Tensor | None) -> Batch:
        b = Batch(y=self.data.labels[p.idx], domain=p.d)
        if x is not None:
            b.x = x.float().div_(255.0)
        if p.online:
            b.t_img = self.res.online_targets(tx.float().div_(255.0))
        elif p.rows is not None:
            if p.use_feats:
                b.feats = self.feats[p.rows, p.choice]  # [N_train, V, d] -> [B, d]
            elif self.hidden is not None:
                b.hidden, b.hidden_stage = self.hidden[p.rows, p.choice], self.prefix_n
            if p.needs_t:
                b.t_img = self.targets[p.rows, p.choice]
        return b
