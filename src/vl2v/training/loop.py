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
Beside it: the minibatches themselves come from :class:`~vl2v.training.stream.DataStream`
(``stream.py``), the counters a resume checkpoint saves are a
:class:`~vl2v.training.state.LoopState` (``state.py``), and tools watch the loop through
:class:`~vl2v.training.hooks.TrainerHooks` (``hooks.py``).

A run, in order (:meth:`Trainer.run`): build the algorithm (:meth:`Trainer._build_algorithm`), write
``config.json``, get the teacher's answers (:meth:`Trainer._teacher_images`), restore a checkpoint
(:meth:`Trainer._restore`), run each stage (:meth:`Trainer._run_stage`: its steps, and on evaluation steps
:meth:`Trainer._evaluate_and_checkpoint`), then write the outcome (:meth:`Trainer._finish`).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vl2v.config import TrainConfig
from vl2v.data.dataset import DomainData
from vl2v.data.splits import seed_hash
from vl2v.errors import ConfigError
from vl2v.methods import Algorithm, Batch, Stage, TaskContext, create_algorithm, get_algorithm
from vl2v.runs.layout import RunDir
from vl2v.runs.records import RunRecorder
from vl2v.runs.selection import select_record, summarize
from vl2v.students.registry import Student
from vl2v.teachers.prompts import class_name, prompts_for, text_classifier
from vl2v.teachers.store import view_id
from vl2v.training.checkpoint import load_state, load_weights, save_state, save_weights
from vl2v.training.distributed import all_reduce_sum, barrier, main_first, wrap
from vl2v.training.distributed import info as dist_info
from vl2v.training.hooks import EvalInfo, StepInfo, TrainerHooks
from vl2v.training.resources import SharedResources
from vl2v.training.state import LoopState
from vl2v.training.stream import DataStream, to_device
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


@dataclass
class RunOutcome:
    run_dir: Path
    final: dict[str, Any]


@dataclass
class _StageRun:
    """One stage being run: what its steps, evaluations and checkpoints share."""

    index: int  # the stage's position in the algorithm's stages
    stage: Stage
    last: bool  # the run's last stage: SWAD may average it, and no next stage takes its best checkpoint
    use_feats: bool  # trains (and is evaluated) on the pretrained student's cached features
    model: nn.Module  # what the update runs (the algorithm, or its DistributedDataParallel wrapper)
    swad: LossValley | None
    pbar: Any  # the stage's progress bar


def _spec_json(spec: RunSpec) -> dict[str, Any]:
    """``config.json``'s ``spec``; ``drawn`` only when something was drawn (hparams seed 0: as before the search)."""
    d = asdict(spec)
    if not spec.drawn:
        d.pop("drawn")
    return d


class Trainer:
    """One run: algorithm ``spec.algorithm`` on target domain ``spec.target``, trial ``spec.trial_seed``, its
    files in ``run_dir``. ``hooks`` (:class:`~vl2v.training.hooks.TrainerHooks`; also settable as
    :attr:`hooks` before :meth:`run`) hear of every step and evaluation."""

    def __init__(self, spec: RunSpec, cfg: TrainConfig, res: SharedResources, make_student: Callable[[], Student],
                 run_dir: Path, args_record: dict[str, Any], student_key: tuple = (),
                 data: DomainData | None = None, teacher_encoder: Callable[[], Any] | None = None,
                 prepaid: dict[str, float] | None = None, hooks: TrainerHooks | None = None) -> None:
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
        self.hooks = hooks if hooks is not None else TrainerHooks()
        kind = cfg.data_stream_kind
        if (kind == "fresh" and cfg.teacher_mode == "cached" and self.info.uses_teacher_images
                and self.info.needs_training):
            raise ConfigError(f"{spec.algorithm} learns from the teacher's embedding of each view: a fresh data "
                              "stream needs --teacher-mode online (or use --data-stream stored)")
        # the training minibatches: which images and views, drawn per stage, and what they are built from
        self.stream = DataStream(self.data, res, self.pools, self.train_indices, cfg.batch_size, kind,
                                 spec.trial_seed, spec.target, self.device, self.seed)
        # set by run() (and _context): the run's own
        self.main = True  # this process writes the run's files (rank 0 of a data-parallel run)
        self.prompt_names: list[str] = []  # the trained classes' names in the prompts
        self.input_size = cfg.image_size  # the student's input side: the algorithm's own, else the config's
        self._n_stages = 0  # the algorithm's stages (0: nothing to train)
        self.t_start = 0.0  # time.time() the run's clock counts from (moved back by a resumed run's elapsed time)
        self.stats0: dict[str, float] = {}  # the store's counters the records' `queries` count from
        self._bill0: dict[str, float] = {}  # the store's counters the teacher bill counts from
        self.state = LoopState()  # steps, bests, losses: what a resume checkpoint saves
        self._prefix_n = 0  # leading student stages served from a cache in the current stage (training and eval)
        self._stage_best_mem: dict[str, torch.Tensor] | None = None  # the current stage's best weights, in memory

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
            self.stream.targets = self.res.teacher_targets(self.train_indices)  # every training view, paid once
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
        will read (the same calls :meth:`_begin_stage` and :meth:`evaluate` make), without training. A parallel
        comparison does this once in the parent and hands the caches to every worker
        (:meth:`SharedResources.save_features`), instead of each worker computing them again."""
        if (not (self.info.has_student and self.info.uses_registry_student) or self.rd.is_done()
                or self.stream.kind != "stored"):
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

    # ------------------------------------------------------------ the run
    def run(self, resume: bool = False) -> RunOutcome:
        """Train the run (from its last checkpoint when ``resume`` and one exists) and write its files; a
        finished run is read back instead."""
        self.main = dist_info().is_main
        if self.rd.is_done():
            return RunOutcome(self.run_dir, self.rd.final())
        self._check_can_run(resume)
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        algo = self._build_algorithm()
        stages = algo.stages() if algo.needs_training else []
        self._n_stages = len(stages)
        recorder = self._recorder(algo)
        if self.main:
            self._write_config(recorder, stages)
        self._start_clocks_and_pay()
        resume_state = self._restore(algo, recorder, resume)
        if not stages:  # zero-shot and other training-free algorithms: one evaluation
            ev = self._evaluation(algo, use_feats=False, stage="none", step=0)
            recorder.write(step=0, stage="none", stage_step=0, loss=None, evals=ev,
                           wall=time.time() - self.t_start, queries=_diff(self.res.store, self.stats0))
        swad: LossValley | None = None
        backbone_pristine = True  # no stage so far trained the backbone
        for si, stage in enumerate(stages):
            if si >= self.state.stage_index and self.hooks.run_stage(stage):
                swad = self._run_stage(algo, si, stage, stages, backbone_pristine, recorder, resume_state)
            backbone_pristine = backbone_pristine and stage.backbone_frozen
        return self._finish(algo, stages, swad, recorder)

    def _check_can_run(self, resume: bool) -> None:
        """Refuse, before any work, a batch that does not divide over the processes, or resuming a run with
        another teacher than the one it started with."""
        world = dist_info().world_size
        if self.cfg.batch_size % world:
            raise ConfigError(f"the global batch ({self.cfg.batch_size} per domain) must divide evenly over "
                              f"{world} processes")
        rd = self.rd
        if resume and rd.last_state.exists() and rd.has_config():
            old = rd.config().get("args", {}).get("teacher_identity")
            new = self.args_record.get("teacher_identity")
            if old != new:
                raise ConfigError(f"{self.run_dir} was started with teacher {old!r} but the teacher is now {new!r}; "
                                  "resuming would mix two teachers' targets. Use the original teacher, or a new --out.")

    def _build_algorithm(self) -> Algorithm:
        """The algorithm, its student initialised from the run's seed; the teacher's prompt texts paid."""
        cfg = self.cfg
        torch.manual_seed(self.seed)
        self._bill0 = self.res.store.stats.as_dict() if self.res.store is not None else {}  # the run's bill counts from here
        with main_first():  # rank 0 pays for the text embeddings, the others read them from the store
            ctx = self._context()
        student = self.make_student() if (self.info.has_student and self.info.uses_registry_student) else None
        algo = create_algorithm(self.spec.algorithm, ctx, student, self.spec.options()).to(self.device)
        if algo.student is not None:
            algo.student.to(memory_format=torch.channels_last)
            if cfg.compile:
                algo.student.compile()  # in place: state_dict keys stay as they are
        self.input_size = self.stream.input_size = algo.image_size or cfg.image_size
        return algo

    def _recorder(self, algo: Algorithm) -> RunRecorder:
        """The writer of ``results.jsonl`` (rank 0's; the others' write nothing), with the run's args and hparams."""
        cfg, spec, res = self.cfg, self.spec, self.res
        return RunRecorder(self.run_dir, args={**self.args_record, "algorithm": self.info.name,
                                               "test_envs": [spec.target], "trial_seed": spec.trial_seed,
                                               "hparams_seed": spec.hparams_seed, "output_dir": str(self.run_dir)},
                           hparams={**asdict(algo.hparams), **{f"schedule_{k}": v for k, v in asdict(cfg.schedule).items()},
                                    "batch_size": cfg.batch_size, "image_size": self.input_size,
                                    "teacher_mode": cfg.teacher_mode, "views": res.views, "swad": cfg.swad,
                                    "data_stream": self.stream.kind},
                           enabled=self.main)

    def _write_config(self, recorder: RunRecorder, stages: list[Stage]) -> None:
        cfg = self.cfg
        atomic_write_json(self.rd.config_json, {
            "spec": _spec_json(self.spec), "train": _jsonable(asdict(cfg)), "args": recorder.args,
            "hparams": recorder.hparams, "stages": [asdict(s) for s in stages], "domains": self.data.domains,
            "classes": self.data.classes, "prompts": {"class_names": self.prompt_names, "templates": list(cfg.templates)},
            "input_size": self.input_size, "world_size": dist_info().world_size,
            "data_stream": self.stream.record(stages)})

    def _start_clocks_and_pay(self) -> None:
        """Start the run's clock and query counters, then get the teacher's answers the run needs (paid here,
        or read from the store when another process paid them ahead: ``prepaid``)."""
        store = self.res.store
        self.stats0 = store.stats.as_dict() if store else {}
        self.t_start = time.time()
        with main_first():  # teacher queries: rank 0 asks and stores, the other ranks read
            self._teacher_images()
        if store is not None and self.prepaid is not None:
            self.stats0 = {k: v - self.prepaid.get(k, 0) for k, v in store.stats.as_dict().items()}

    def _restore(self, algo: Algorithm, recorder: RunRecorder, resume: bool) -> dict | None:
        """A fresh loop state and data stream, or, when resuming from a checkpoint, the algorithm, loop state,
        data stream and torch RNG it saved (records after it are dropped). Returns the checkpoint (None: a
        fresh start)."""
        rd = self.rd
        self._prefix_n = 0
        self.state = LoopState()
        self.stream.start(self.seed)
        resume_state = load_state(rd.last_state) if resume and rd.last_state.exists() else None
        if resume_state is not None:
            check_compatible(resume_state["algorithm"], algo, rd.last_state)
            algo.load_state_dict(resume_state["algorithm"])
            self.state.load_state_dict(resume_state["loop"])
            self.stream.load_rng_state(resume_state["sampler"], resume_state["gen"])
            torch.set_rng_state(resume_state["torch_rng"])
            recorder.truncate_after(self.state.global_step - 1)
            self.t_start -= self.state.elapsed
        else:
            recorder.truncate_after(-1)  # a fresh start drops records of an interrupted attempt
        self._stage_best_mem = None
        return resume_state

    # ------------------------------------------------------------ stages and steps
    def _run_stage(self, algo: Algorithm, si: int, stage: Stage, stages: list[Stage], backbone_pristine: bool,
                   recorder: RunRecorder, resume_state: dict | None) -> LossValley | None:
        """Stage ``si`` from its next step (0, or where the checkpoint of a resumed run stopped) to its end; the
        next stage then starts from this stage's best checkpoint. Returns the stage's SWAD averager, if any."""
        state = self.state
        resuming = resume_state is not None and si == state.stage_index and state.stage_step > 0
        st = self._begin_stage(algo, si, stage, si == len(stages) - 1, backbone_pristine,
                               resume_state if resuming else None)
        t_stage = time.time()
        self._train_steps(algo, st, recorder)
        st.pbar.close()
        state.add_stage_seconds(stage.name, time.time() - t_stage)
        if not st.last:  # the next stage starts from this stage's best checkpoint
            self._load_stage_best(algo, si)
            state.hand_over(stage.name)  # which checkpoint the next stage started from, for final.json
        state.end_stage(si)
        self._stage_best_mem = None
        return st.swad

    def _begin_stage(self, algo: Algorithm, si: int, stage: Stage, last: bool, backbone_pristine: bool,
                     resume_state: dict | None) -> _StageRun:
        """Set the stage up: the algorithm's stage and optimizer, the data stream (a new one, or the resumed
        stage's, ``resume_state``), the caches its steps read, SWAD and the progress bar."""
        cfg, res, state = self.cfg, self.res, self.state
        algo.begin_stage(stage)
        if resume_state is not None and algo.optimizer is not None and resume_state.get("optimizer"):
            algo.optimizer.load_state_dict(resume_state["optimizer"])
        model = wrap(algo, self.device)  # DistributedDataParallel when data-parallel
        if resume_state is None:  # a resumed stage continues the stream it saved
            state.start_stream(stage.name, self.stream.reset(stage))
        stored = self.stream.kind == "stored"
        use_feats = stage.backbone_frozen and backbone_pristine and stored
        feats = res.frozen_features(algo.student, self.train_indices, "train", self.student_key) if use_feats else None
        self._prefix_n = self._cacheable_prefix(algo, stage, backbone_pristine)
        hidden = None
        if self._prefix_n and stored:  # stored views (replayed, not freshly augmented) start from cached activations too
            hidden = res.frozen_features(algo.student, self.train_indices, "train", self.student_key,
                                         prefix=self._prefix_n)
        self.stream.use_caches(feats, hidden, self._prefix_n)
        swad = LossValley(algo, cfg.swad_cfg) if (cfg.swad and last and not stage.backbone_frozen) else None
        if swad is not None and resume_state is not None and resume_state.get("swad"):
            swad.load_state_dict(resume_state["swad"])
        pbar = bar(stage.steps, desc=f"{self.spec.algorithm}/{self.data.domains[self.spec.target]}/{stage.name}",
                   unit="step", disable=not self.main)
        pbar.update(state.stage_step)
        algo.train()
        return _StageRun(index=si, stage=stage, last=last, use_feats=use_feats, model=model, swad=swad, pbar=pbar)

    def _train_steps(self, algo: Algorithm, st: _StageRun, recorder: RunRecorder) -> None:
        """The stage's remaining steps: update, SWAD's running average, and on evaluation steps an evaluation
        and checkpoint; the hooks hear of each step."""
        state, stage = self.state, st.stage
        batches = self.stream.batches(algo, stage, state.stage_step, state.stream[stage.name],
                                      snapshot_at=lambda s: self._is_eval_step(s, stage))
        try:
            while True:
                t0 = self._clock()
                item = next(batches, None)
                if item is None:
                    return
                s, mbs, rng = item
                t1 = time.perf_counter()
                global_step = state.global_step
                logs = algo.update(mbs, st.model, autocast=self._autocast())
                state.loss_sum += logs.get("loss", 0.0)
                state.loss_n += 1
                if st.swad is not None:
                    st.swad.observe(algo, state.global_step)
                st.pbar.update(1)
                evaluated = self._is_eval_step(s, stage)
                if evaluated:
                    self._evaluate_and_checkpoint(algo, st, s, logs, rng, recorder)
                else:
                    state.global_step += 1
                    state.stage_step = s + 1
                info = StepInfo(stage=stage, step=s, global_step=global_step, wait_s=t1 - t0,
                                step_s=self._clock() - t0, evaluated=evaluated, loss=logs.get("loss"))
                if self.hooks.on_step(info):
                    return
        finally:
            batches.close()

    def _load_stage_best(self, algo: Algorithm, si: int) -> None:
        """Load stage ``si``'s best checkpoint into the algorithm (kept in memory, else its file), if it has one."""
        best = self._stage_best_mem
        path = self.rd.stage_best(si)
        if best is None and path.exists():
            best = load_weights(path)[0]
        if best is not None:
            algo.load_state_dict(best)

    def _evaluate_and_checkpoint(self, algo: Algorithm, st: _StageRun, s: int, logs: dict, rng: dict,
                                 recorder: RunRecorder) -> None:
        """Evaluation step ``s``: evaluate, record, update SWAD and the best checkpoints, save the resume state."""
        state, stage = self.state, st.stage
        step = state.global_step
        ev = self._evaluation(algo, st.use_feats, stage=stage.name, step=step)
        loss = self._mean_train_loss()
        recorder.write(step=step, stage=stage.name, stage_step=s, loss=loss, evals=ev, wall=time.time() - self.t_start,
                       queries=_diff(self.res.store, self.stats0), extra=logs)
        st.pbar.set_postfix(loss=f"{loss:.3f}", val=f"{ev['val_acc']:.3f}", tgt=f"{ev[f'env{self.spec.target}_in_acc']:.3f}")
        if st.swad is not None:
            st.swad.close_segment(ev["val_loss"], step)
        save = self.cfg.save_checkpoints and self.main
        self._keep_bests(algo, st, s, step, ev["val_acc"], save)
        state.global_step = step + 1
        state.stage_step = s + 1
        state.elapsed = time.time() - self.t_start
        if save:
            save_state(self.rd.last_state, {
                "algorithm": algo.state_dict(), "loop": state.state_dict(),
                "optimizer": algo.optimizer.state_dict() if algo.optimizer else {},
                "sampler": rng["sampler"], "gen": rng["gen"], "torch_rng": torch.get_rng_state(),
                "swad": st.swad.state_dict() if st.swad is not None else None})

    def _mean_train_loss(self) -> float:
        """The mean training loss since the last evaluation, over all ranks' shards; the sums start again."""
        state = self.state
        loss_sum = float(all_reduce_sum(torch.tensor([state.loss_sum], dtype=torch.float64))) / dist_info().world_size
        loss = loss_sum / max(1, state.loss_n)
        state.loss_sum, state.loss_n = 0.0, 0
        return loss

    def _keep_bests(self, algo: Algorithm, st: _StageRun, s: int, step: int, val_acc: float, save: bool) -> None:
        """Keep the evaluated weights as the stage's best (handed to the next stage) and the run's best (its
        model) where they beat the best so far, and may compete."""
        cfg, state, rd, stage = self.cfg, self.state, self.rd, st.stage
        # a non-final stage's checkpoints compete for its best only from stage step `stage_select_min_step` on
        # (the authors' --model_save); its last evaluation always does, so a shorter stage still has a best
        eligible = st.last or s >= cfg.stage_select_min_step or s == stage.steps - 1
        if eligible and (state.stage_best is None or val_acc > state.stage_best["val_acc"]):
            state.stage_best = {"step": step, "stage_step": s, "val_acc": val_acc}
            self._stage_best_mem = copy.deepcopy(algo.state_dict())
            if save:
                save_weights(rd.stage_best(st.index), algo.state_dict(), {"step": step, "stage": stage.name})
        candidate = cfg.select_stage == "all" or st.index == self._n_stages - 1
        if candidate and (state.best is None or val_acc > state.best["val_acc"]):
            state.best = {"step": step, "val_acc": val_acc}
            if save:
                save_weights(rd.best, algo.state_dict(), {"step": step, "stage": stage.name, "val_acc": val_acc})

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

    def _clock(self) -> float:
        """``time.perf_counter()``, after the device's queued work when the hooks ask (``synchronize``, CUDA)."""
        if self.hooks.synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

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
                logits.append(algo.predict_batch(to_device(b, self.device)).float().cpu())
        if algo.has_student and not use_feats and not self._prefix_n:
            for s, x in zip(range(0, len(idx), bs), self.res.eval_batches(idx, self.input_size, bs)):
                b = Batch(y=self.labels[idx[s:s + bs]], x=x.float().div_(255.0))
                with self._autocast():
                    logits.append(algo.predict_batch(to_device(b, self.device)).float().cpu())
        return torch.cat(logits) if logits else torch.empty(0, len(self.data.classes))

    def _evaluation(self, algo: Algorithm, use_feats: bool, stage: str, step: int) -> dict[str, float]:
        """An evaluation the run records: :meth:`evaluate` (or the hooks' placeholders), timed for the hooks."""
        sets = self._eval_sets()
        t0 = self._clock()
        ev = self.hooks.evaluation(sets)
        if ev is None:
            ev = self.evaluate(algo, use_feats)
        seconds = self._clock() - t0
        images = sum(len(self.data.split_items(d, w)) for d, w in sets)
        self.hooks.on_eval(EvalInfo(stage=stage, step=step, seconds=seconds, images=images, metrics=ev))
        return ev

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
        generalised setting). Only a model that predicts by comparing with class text embeddings (its
        ``text_classes()``: ADiP, SD, the teacher's zero-shot) can name a class it never trained on; for the
        others the novel scores are None."""
        from vl2v.training.novel import novel_class_scores

        data = self.data
        out: dict[str, Any] = {"fold": (self.args_record.get("novel_classes") or {}).get("fold"),
                               "held_out": [data.all_classes[c] for c in data.novel],
                               "seen_classes": list(data.classes), "checkpoint": checkpoint}
        text = algo.text_classes()
        idx = self._novel_target_items()
        if text is not None:
            algo.eval()
            try:
                with algo.with_text_classes(self._novel_classifier().to(text)), torch.no_grad():
                    logits = self._logits(algo, idx, use_feats=False)
            finally:
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

    # ------------------------------------------------------------ the outcome
    def _finish(self, algo: Algorithm, stages: list[Stage], swad: LossValley | None, recorder: RunRecorder) -> RunOutcome:
        """Select the run's model, average it with SWAD, write its predictions and ``final.json``, and mark the
        run done (its resume state and per-stage checkpoints removed)."""
        spec = self.spec
        final: dict[str, Any] = {"run_dir": str(self.run_dir), "algorithm": self.info.name, "target": spec.target,
                                 "target_name": self.data.domains[spec.target], "trial_seed": spec.trial_seed}
        barrier()  # rank 0 has written every record
        self._select(final, recorder)
        if self.cfg.save_checkpoints and self.main and stages:
            save_weights(self.rd.last_weights, algo.state_dict(), {"step": self.state.global_step - 1})
        if swad is not None:
            final["swad"] = self._apply_swad(algo, swad, recorder)
        if self.main:
            checkpoint = self._final_model(algo, stages)
            if self.data.novel:
                final["novel"] = self._novel_scores(algo, checkpoint)
        self._accounts(final, stages)
        if self.main:
            self._write_final(final)
        barrier()
        return RunOutcome(self.run_dir, final)

    def _select(self, final: dict[str, Any], recorder: RunRecorder) -> None:
        """The records' training-domain selection (and the oracle's), into ``final``."""
        records = recorder.records()
        chosen = select_record(records, stages=self.cfg.select_stage)
        if chosen is not None:
            final["selected"] = summarize(chosen)
            final["oracle"] = summarize(select_record(records, "oracle"), "oracle")
            final["selection"] = {"method": "training_domain", "stages": self.cfg.select_stage}

    def _apply_swad(self, algo: Algorithm, swad: LossValley, recorder: RunRecorder) -> dict[str, Any]:
        """Average the loss valley SWAD found into the algorithm and evaluate it: ``final.json``'s ``swad``."""
        summary = swad.summary()
        if not swad.apply_to(algo):
            return {"note": "SWAD found no loss valley (validation loss never converged); not averaged", **summary}
        step = self.state.global_step
        ev = self._evaluation(algo, use_feats=False, stage="swad", step=step)
        out = {**summarize({**ev, "args": recorder.args, "step": step, "stage": "swad"}), **summary}
        if self.cfg.save_checkpoints and self.main:
            save_weights(self.rd.swad, algo.state_dict(), {"swad": summary})
        return out

    def _final_model(self, algo: Algorithm, stages: list[Stage]) -> str:
        """Make the selected checkpoint the run's model and write its predictions; returns which checkpoint the
        algorithm holds now ("selected", or "last" when no checkpoint was kept)."""
        rd = self.rd
        if self.cfg.save_checkpoints and rd.best.exists():
            os.replace(rd.best, rd.model)
            algo.load_state_dict(load_weights(rd.model)[0])
            self._write_predictions(algo, rd.predictions)
            return "selected"
        if not stages:
            self._write_predictions(algo, rd.predictions)
            return "selected"
        return "last"

    def _accounts(self, final: dict[str, Any], stages: list[Stage]) -> None:
        """What the run cost and trained on, into ``final``: queries, teacher bill, data stream, times."""
        store, state = self.res.store, self.state
        final["queries"] = _diff(store, self.stats0)
        if store is not None:
            final["teacher_bill"] = self.teacher_bill()
        if stages:  # per stage: the stream's seed and a digest of every (image, view) it trained on, in order
            stored = self.stream.kind == "stored"
            final["data_stream"] = {"kind": self.stream.kind, "views": self.res.views if stored else None,
                                    "stages": state.stream or {}}
        final["stage_seconds"] = {k: round(v, 2) for k, v in (state.stage_seconds or {}).items()}
        if state.stage_selected:  # the checkpoint each non-final stage handed to the next
            final["stage_selected"] = state.stage_selected
        final["n_train_images"] = len(self.train_indices)
        final["wall_time"] = time.time() - self.t_start

    def _write_final(self, final: dict[str, Any]) -> None:
        """Write ``final.json``, drop what only an unfinished run needs, and mark the run done."""
        rd = self.rd
        ckpt = rd.checkpoints
        atomic_write_json(rd.final_json, final)
        # the run is final: drop resume state, per-stage bests and temp files of interrupted writes
        if ckpt.is_dir():
            for p in [rd.last_state, *rd.stage_bests(), *rd.temp_files()]:
                if p.exists():
                    p.unlink()
            if not any(ckpt.iterdir()):
                ckpt.rmdir()
        atomic_write_text(rd.done, "done")


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


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))
