"""The algorithm interface and registry.

An algorithm owns a student (and its heads) and knows its loss. It exposes
DomainBed's ``update(minibatches)`` and ``predict(x)``, plus the list of
:class:`Stage` s it trains in (ADiP: align then distill; LP-FT: lp then ft).
The training loop runs the stages in order, restoring the best
(source-validation) checkpoint of a stage before the next one starts; it
never knows which algorithm it runs.

A stage with ``backbone_frozen=True`` lets the loop feed cached backbone
features (``Batch.feats``) instead of images: identical results, far faster.

An algorithm also owns its prediction head: ``head()`` (the module export bakes
into the deployed model) and ``text_classes()`` / ``with_text_classes(T)`` (the
class text embeddings it predicts with, replaced to name other classes; None for
an algorithm that predicts with a classifier over its training classes).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vl2v.config import Schedule
from vl2v.students.registry import Student


@dataclass
class Batch:
    """One domain's minibatch. ``x``: images [B,3,S,S] in [0,1]; ``feats``: cached
    backbone features (frozen stages); ``t_img``: the teacher's normalised
    embeddings of the same views (algorithms with ``uses_teacher_images``)."""

    y: torch.Tensor
    x: torch.Tensor | None = None
    feats: torch.Tensor | None = None
    t_img: torch.Tensor | None = None
    domain: int = -1
    hidden: torch.Tensor | None = None  # activations after the student's first `hidden_stage` (frozen) stages
    hidden_stage: int = 0

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    lr: float
    backbone_frozen: bool
    weight_decay: float = 0.0
    swad: bool = True  # SWAD may average this stage (only the last stage is averaged)


@dataclass
class TaskContext:
    num_classes: int
    class_names: list[str]  # class folder names
    source_domains: list[str]
    text_classifier: torch.Tensor | None = None  # T_c [C, D], normalised (teacher text space)
    teacher_dim: int | None = None
    prompts: Any = None  # callable(list[str]) -> [N, D] text embeddings (RISE anchors)
    teacher_encoder: nn.Module | None = None  # white-box teachers only (VL2V-SD)
    teacher_image_size: int | None = None
    schedule: Schedule = field(default_factory=Schedule)
    # each class's name in the teacher's prompts (vl2v.teachers.prompts); None: the folder names, "_" -> " "
    prompt_names: list[str] | None = None


class Algorithm(nn.Module):
    """Base class. Subclasses define ``stages``, ``begin_stage``, ``update``, ``logits``."""

    name: str = ""
    # capability flags: set from the algorithm's registry info by @register_algorithm (see methods/registry.py)
    uses_teacher_images: bool = False
    needs_training: bool = True
    has_student: bool = True
    uses_registry_student: bool = True
    image_size: int | None = None  # input size the algorithm needs (None: the run's --image-size)

    def __init__(self, ctx: TaskContext, student: Student | None, hparams: Any) -> None:
        super().__init__()
        self.ctx = ctx
        self.student = student
        self.hparams = hparams
        self.optimizer: torch.optim.Optimizer | None = None
        self.stage: Stage | None = None

    # -- stages ---------------------------------------------------------
    def stages(self) -> list[Stage]:
        return []

    def warmup_stages(self) -> list[Stage]:
        """The head warm-up on the frozen backbone that ``schedule.head_warmup`` asks every fine-tuning algorithm
        for ([] when off): ``frozen_steps`` at ``frozen_lr``, like ADiP's Align and LP-FT's probe."""
        s = self.ctx.schedule
        return [Stage("warmup", s.frozen_steps, s.frozen_lr, True, s.weight_decay)] if s.head_warmup else []

    def begin_stage(self, stage: Stage) -> None:
        self.stage = stage
        trainable = self.trainable_parameters(stage)
        self.optimizer = torch.optim.Adam(trainable, lr=stage.lr, weight_decay=stage.weight_decay) if trainable else None

    def trainable_parameters(self, stage: Stage) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # -- training -------------------------------------------------------
    def features(self, b: Batch) -> torch.Tensor:
        if b.feats is not None:
            return b.feats
        assert self.student is not None
        if b.hidden is not None:  # the frozen prefix was computed once (same values as running it again)
            return self.student.forward_from(b.hidden, b.hidden_stage)
        assert b.x is not None
        return self.student(b.x)

    def compute_loss(self, minibatches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss of one step (and extra numbers to log). Subclasses implement this."""
        raise NotImplementedError

    def forward(self, minibatches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, float]]:
        # Going through forward lets DistributedDataParallel wrap the algorithm.
        return self.compute_loss(minibatches)

    def update(self, minibatches: Sequence[Batch], model: nn.Module | None = None,
               autocast: Any = None) -> dict[str, float]:
        """DomainBed's interface: one optimisation step on per-domain minibatches.

        ``model`` is the module to call (a DistributedDataParallel wrapper of
        ``self`` in data-parallel runs); gradients are averaged across ranks there.
        ``autocast``: a context (e.g. ``torch.autocast("cuda", torch.bfloat16)``) for the forward pass
        and the loss; the backward pass runs outside it, as PyTorch recommends.
        """
        with autocast if autocast is not None else contextlib.nullcontext():
            loss, logs = (model or self)(minibatches)
        self.step(loss)
        return {"loss": float(loss.detach()), **logs}

    def step(self, loss: torch.Tensor) -> None:
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    # -- prediction -----------------------------------------------------
    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits from backbone features."""
        raise NotImplementedError

    def predict_batch(self, b: Batch) -> torch.Tensor:
        return self.logits(self.features(b))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """DomainBed's interface: images [B,3,S,S] in [0,1] -> logits [B, C]."""
        return self.predict_batch(Batch(y=torch.zeros(x.shape[0], dtype=torch.long), x=x))

    # -- the prediction head and its class names ----------------------------
    def head(self) -> nn.Module | None:
        """The module mapping the student's features to :meth:`logits` (export bakes it into the deployed
        model): a :class:`~vl2v.methods.heads.CosineHead` or :class:`~vl2v.methods.heads.LinearHead` sharing
        this algorithm's parameters. None where the head is not one of those (export then runs
        :meth:`logits` itself)."""
        return None

    def text_classes(self) -> torch.Tensor | None:
        """The class text embeddings ``T_c`` [C, D] the algorithm predicts with (``100 * cos(z, T_c)``): new
        class names can be given to it by replacing them (:meth:`set_text_classes`). None for an algorithm
        that predicts with a classifier over its training classes, even one that holds ``T_c`` for its loss."""
        return None

    def set_text_classes(self, text: torch.Tensor) -> None:
        """Predict with the class text embeddings ``text`` [C', D] from now on (other or more classes);
        TypeError where :meth:`text_classes` is None."""
        raise TypeError(f"{type(self).__name__} predicts with a classifier over its training classes: "
                        "it takes no new class names")

    @contextlib.contextmanager
    def with_text_classes(self, text: torch.Tensor) -> Iterator["Algorithm"]:
        """Predict with ``text`` inside the block; the algorithm's own class text embeddings come back after."""
        own = self.text_classes()
        self.set_text_classes(text)  # TypeError where there are none to replace (own is None)
        try:
            yield self
        finally:
            self.set_text_classes(own)


def set_trainable(module: nn.Module | None, flag: bool) -> None:
    if module is None:
        return
    for p in module.parameters():
        p.requires_grad_(flag)


def set_student_trainable(student: Student, frozen_prefix: int) -> None:
    """Backbone trainable except its first ``frozen_prefix`` stages."""
    set_trainable(student, True)
    if frozen_prefix:
        student.freeze_prefix(frozen_prefix)


def cat_batches(minibatches: Sequence[Batch]) -> Batch:
    def cat(attr: str) -> torch.Tensor | None:
        vals = [getattr(b, attr) for b in minibatches]
        return None if any(v is None for v in vals) else torch.cat(vals)

    y = torch.cat([b.y for b in minibatches])
    return Batch(y=y, x=cat("x"), feats=cat("feats"), t_img=cat("t_img"), hidden=cat("hidden"),
                 hidden_stage=minibatches[0].hidden_stage)


def cosine_logits(z: torch.Tensor, text: torch.Tensor, scale: float = 100.0) -> torch.Tensor:
    """``scale * cos(z, T_c)``: VL2V's Predict rule."""
    return scale * F.normalize(z, dim=-1) @ F.normalize(text, dim=-1).t()
