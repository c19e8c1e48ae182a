"""The one training loop every algorithm uses (:class:`Trainer`: one run).

For one (algorithm, target domain, trial seed) it: builds the algorithm, runs its stages with per-domain
balanced minibatches from the source domains' "in" splits, evaluates every ``eval_every`` steps (and at
each stage's last step) on every domain's "out" split and the target's "in" split, appends each evaluation
to ``results.jsonl`` with DomainBed's keys, keeps the best source-validation checkpoint (restored before
the next stage), optionally averages the last stage with SWAD, and writes ``final.json`` and ``done``.

It never knows which algorithm it runs: algorithms declare their stages and whether they need the
teacher's image embeddings. The run's parts, each in its own module:

=====================  ===================================================================================
``spec.py``            :class:`~vl2v.training.spec.RunSpec`: which run (algorithm, target, seeds, options)
``task.py``            :class:`~vl2v.training.task.RunTask`: its sources, splits, prompts, text classifier
``bill.py``            :class:`~vl2v.training.bill.TeacherAccount`: the teacher answers it needs, its bill
``stream.py``          :class:`~vl2v.training.stream.DataStream`: the training minibatches
``stages.py``          :class:`~vl2v.training.stages.StageRunner`: the stages, steps and checkpoints
``evaluator.py``       :class:`~vl2v.training.evaluator.Evaluator`: evaluations, novel scores, predictions
``outcome.py``         :class:`~vl2v.training.outcome.RunEnd`: selection, SWAD, ``final.json``, ``done``
``state.py``           :class:`~vl2v.training.state.LoopState`: what a resume checkpoint saves
``hooks.py``           :class:`~vl2v.training.hooks.TrainerHooks`: how tools watch the loop
=====================  ===================================================================================

A run, in order (:meth:`Trainer.run`): build the algorithm, write ``config.json``, get the teacher's
answers, restore a checkpoint, run each stage, then write the outcome.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from vl2v.config import TrainConfig
from vl2v.data.dataset import DomainData
from vl2v.data.splits import seed_hash
from vl2v.errors import ConfigError
from vl2v.methods import Algorithm, Stage, create_algorithm, get_algorithm
from vl2v.runs.layout import RunDir
from vl2v.runs.records import RunRecorder
from vl2v.students.registry import Student
from vl2v.training.bill import TeacherAccount
from vl2v.training.checkpoint import load_state
from vl2v.training.distributed import info as dist_info
from vl2v.training.distributed import main_first
from vl2v.training.evaluator import Evaluator
from vl2v.training.hooks import TrainerHooks
from vl2v.training.outcome import RunEnd
from vl2v.training.resources import SharedResources
from vl2v.training.spec import RunSpec
from vl2v.training.stages import StageRunner, cacheable_prefix
from vl2v.training.state import LoopState
from vl2v.training.stream import DataStream
from vl2v.training.task import RunTask
from vl2v.utils.device import resolve_device
from vl2v.utils.io import atomic_write_json


@dataclass
class RunOutcome:
    run_dir: Path
    final: dict[str, Any]


class Trainer:
    """One run: algorithm ``spec.algorithm`` on target domain ``spec.target``, trial ``spec.trial_seed``, its
    files in ``run_dir``. ``data``: the images with this trial seed's splits (default ``res.data``);
    ``prepaid``: teacher queries another process sent for this run ahead (:meth:`pay_teacher`); ``hooks``
    (:class:`~vl2v.training.hooks.TrainerHooks`; also settable as :attr:`hooks` before :meth:`run`) hear of
    every step and evaluation. The experiment's plan (:mod:`vl2v.experiment.plan`) has checked the spec."""

    def __init__(self, spec: RunSpec, cfg: TrainConfig, res: SharedResources, make_student: Callable[[], Student],
                 run_dir: Path, args_record: dict[str, Any], student_key: tuple = (),
                 data: DomainData | None = None, teacher_encoder: Callable[[], Any] | None = None,
                 prepaid: dict[str, float] | None = None, hooks: TrainerHooks | None = None) -> None:
        self.spec, self.cfg, self.res = spec, cfg, res
        self.task = RunTask.of(spec, cfg, res, data if data is not None else res.data)
        self.run_dir = Path(run_dir)
        self.rd = RunDir(self.run_dir)
        self.device = torch.device(resolve_device(cfg.device))
        self.info = get_algorithm(spec.algorithm)
        self.args_record, self.student_key = args_record, student_key
        self.make_student, self.teacher_encoder = make_student, teacher_encoder
        self.seed = seed_hash(spec.trial_seed, spec.hparams_seed, spec.algorithm, spec.target)  # model init
        self.hooks = hooks if hooks is not None else TrainerHooks()
        # the training minibatches: which images and views, drawn per stage, and what they are built from
        self.stream = DataStream(self.task.data, res, self.task.pools, self.task.train_indices, cfg.batch_size,
                                 cfg.data_stream_kind, spec.trial_seed, spec.target, self.device, self.seed)
        self.account = TeacherAccount(self.task, self.info, self.stream, prepaid)

    @property
    def train_indices(self) -> list[int]:
        return self.task.train_indices

    # ------------------------------------------------------------ the teacher, ahead of the run
    def pay_teacher(self) -> dict[str, float]:
        """Ask the teacher now for everything this run will ask it and return what that cost; a run given it as
        ``prepaid`` then reads the store only. Used by a parallel comparison: one process pays, in the order the
        runs would have, and worker processes train. Nothing for a finished run (it will not run again)."""
        if self.res.store is None or self.rd.is_done():
            return {}
        return self.account.pay(lambda: self.task.context(self.info, self.teacher_encoder))

    def teacher_keys(self) -> tuple[set[tuple[str, str]], set[str]]:
        """The distinct teacher answers this run uses (:meth:`TeacherAccount.keys`), for the dry run."""
        return self.account.keys()

    def warm_student_caches(self) -> None:
        """Compute now the pretrained student's cached features and frozen-prefix activations this run's stages
        will read, without training. A parallel comparison does this once in the parent and hands the caches to
        every worker (:meth:`SharedResources.save_features`), instead of each worker computing them again."""
        if (not (self.info.has_student and self.info.uses_registry_student) or self.rd.is_done()
                or self.stream.kind != "stored"):
            return
        task, res, key = self.task, self.res, self.student_key
        algo = create_algorithm(self.spec.algorithm, task.context(self.info, self.teacher_encoder),
                                self.make_student(), hparams=self.spec.values)
        algo.student.to(memory_format=torch.channels_last)
        evals = task.eval_indices()
        pristine = True
        for stage in (algo.stages() if algo.needs_training else []):
            algo.begin_stage(stage)
            if stage.backbone_frozen and pristine:
                res.frozen_features(algo.student, task.train_indices, "train", key)
                res.frozen_features(algo.student, evals, "eval", key)
            n = cacheable_prefix(task, algo, stage, pristine)
            if n:
                res.frozen_features(algo.student, task.train_indices, "train", key, prefix=n)
                res.frozen_features(algo.student, evals, "eval", key, prefix=n)
            pristine = pristine and stage.backbone_frozen

    # ------------------------------------------------------------ the run
    def run(self, resume: bool = False) -> RunOutcome:
        """Train the run (from its last checkpoint when ``resume`` and one exists) and write its files; a
        finished run is read back instead."""
        main = dist_info().is_main
        if self.rd.is_done():
            return RunOutcome(self.run_dir, self.rd.final())
        self._check_can_run(resume)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        evaluator = Evaluator(self.task, self.device, self.student_key, self.hooks)
        algo = self._build_algorithm(evaluator)
        stages = algo.stages() if algo.needs_training else []
        recorder = self._recorder(algo, evaluator.input_size, main)
        if main:
            self._write_config(recorder, stages, evaluator.input_size)
        t_start = time.time()
        self.account.start()
        state, resume_state, t_start = self._restore(algo, recorder, resume, t_start)
        if not stages:  # zero-shot and other training-free algorithms: one evaluation
            ev = evaluator.evaluation(algo, use_feats=False, stage="none", step=0)
            recorder.write(step=0, stage="none", stage_step=0, loss=None, evals=ev,
                           wall=time.time() - t_start, queries=self.account.queries())
        runner = StageRunner(self.task, algo, state, self.stream, evaluator, recorder, self.rd, self.account,
                             self.hooks, t_start, main, self.student_key)
        swad = runner.run(stages, resume_state)
        fold = (self.args_record.get("novel_classes") or {}).get("fold")
        end = RunEnd(evaluator, self.account, self.stream, state, recorder, self.rd, t_start, main, fold)
        return RunOutcome(self.run_dir, end.finish(algo, stages, swad))

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

    def _build_algorithm(self, evaluator: Evaluator) -> Algorithm:
        """The algorithm, its student initialised from the run's seed; the teacher's prompt texts paid."""
        torch.manual_seed(self.seed)
        self.account.open_bill()  # the run's bill counts from here
        with main_first():  # rank 0 pays for the text embeddings, the others read them from the store
            ctx = self.task.context(self.info, self.teacher_encoder)
        student = self.make_student() if (self.info.has_student and self.info.uses_registry_student) else None
        algo = create_algorithm(self.spec.algorithm, ctx, student, hparams=self.spec.values).to(self.device)
        if algo.student is not None:
            algo.student.to(memory_format=torch.channels_last)
            if self.cfg.compile:
                algo.student.compile()  # in place: state_dict keys stay as they are
        evaluator.input_size = self.stream.input_size = algo.image_size or self.cfg.image_size
        return algo

    def _recorder(self, algo: Algorithm, input_size: int, main: bool) -> RunRecorder:
        """The writer of ``results.jsonl`` (rank 0's; the others' write nothing), with the run's args and hparams."""
        cfg, spec = self.cfg, self.spec
        return RunRecorder(self.run_dir, args={**self.args_record, "algorithm": self.info.name,
                                               "test_envs": [spec.target], "trial_seed": spec.trial_seed,
                                               "hparams_seed": spec.hparams_seed, "output_dir": str(self.run_dir)},
                           hparams={**asdict(algo.hparams), **{f"schedule_{k}": v for k, v in asdict(cfg.schedule).items()},
                                    "batch_size": cfg.batch_size, "image_size": input_size,
                                    "teacher_mode": cfg.teacher_mode, "views": self.res.views, "swad": cfg.swad,
                                    "data_stream": self.stream.kind},
                           enabled=main)

    def _write_config(self, recorder: RunRecorder, stages: list[Stage], input_size: int) -> None:
        task = self.task
        atomic_write_json(self.rd.config_json, {
            "spec": self.spec.record(), "train": _jsonable(asdict(self.cfg)), "args": recorder.args,
            "hparams": recorder.hparams, "stages": [asdict(s) for s in stages], "domains": task.data.domains,
            "classes": task.data.classes,
            "prompts": {"class_names": task.prompt_names(), "templates": list(self.cfg.templates)},
            "input_size": input_size, "world_size": dist_info().world_size, "data_stream": self.stream.record(stages)})

    def _restore(self, algo: Algorithm, recorder: RunRecorder, resume: bool,
                 t_start: float) -> tuple[LoopState, dict | None, float]:
        """A fresh loop state and data stream, or, when resuming from a checkpoint, the algorithm, loop state,
        data stream and torch RNG it saved (records after it are dropped). Returns the loop state, the
        checkpoint (None: a fresh start) and the time the run's clock counts from (moved back by a resumed
        run's elapsed time)."""
        rd = self.rd
        state = LoopState()
        self.stream.start(self.seed)
        resume_state = load_state(rd.last_state) if resume and rd.last_state.exists() else None
        if resume_state is not None:
            check_compatible(resume_state["algorithm"], algo, rd.last_state)
            algo.load_state_dict(resume_state["algorithm"])
            state.load_state_dict(resume_state["loop"])
            self.stream.load_rng_state(resume_state["sampler"], resume_state["gen"])
            torch.set_rng_state(resume_state["torch_rng"])
            recorder.truncate_after(state.global_step - 1)
            t_start -= state.elapsed
        else:
            recorder.truncate_after(-1)  # a fresh start drops records of an interrupted attempt
        return state, resume_state, t_start


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


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))
