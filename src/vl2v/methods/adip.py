"""VL2V-ADiP: Align, Distill, Predict (Addepalli et al., CVPR 2024).

* Align: projection ``P`` (Linear d_student -> d_teacher, bias) trained alone,
  backbone and BatchNorm frozen.
* Distill: from the best Align checkpoint, ``P`` frozen, backbone trained.
* Both stages: ``lam * (1 - cos(z, f_I(x))) + (1 - lam) * (1 - cos(z, T_y))``,
  ``z = normalize(P(g(x)))``.
* Predict: ``100 * cos(P(g(x)), T_c)``; the text classifier is never trained.

A control (``prototypes=random`` or ``etf``, meant for ``lam=0``): the class text embeddings ``T_c`` replaced
by fixed class vectors that owe nothing to the class names (random unit vectors, or a simplex equiangular
tight frame) in the same space, so ``adip:lam=0,prototypes=etf`` is a frozen projection and a fixed cosine head
without text semantics. Such a run names no class it did not train on (its buffer is ``prototypes``, not
``text``: predict, export and the novel-class scores treat it as a fixed classifier).
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vl2v.config import Fraction, NonNegFloat, NonNegInt, config_dataclass
from vl2v.methods.base import Algorithm, Batch, Stage, cat_batches, cosine_logits, set_student_trainable, set_trainable
from vl2v.methods.heads import CosineHead
from vl2v.methods.losses import vl2v_loss
from vl2v.methods.registry import register_algorithm
from vl2v.methods.search import LAMBDA_GRID, Choice, Distribution, LogUniform, Scaled


@config_dataclass
class ADiPHParams:
    lam: Fraction = 0.5  # weight of the image-embedding term; 1 - lam weights the text term
    align_lr: NonNegFloat = 0.0  # 0 -> the run's schedule
    align_steps: NonNegInt = 0
    distill_lr: NonNegFloat = 0.0
    distill_steps: NonNegInt = 0
    # the class vectors z is pulled to and compared with: the teacher's class text embeddings (the method), or a
    # control without text semantics: random unit vectors or a simplex ETF (seeded, the same in every run)
    prototypes: Literal["text", "random", "etf"] = "text"

    @classmethod
    def search_space(cls, dataset: str | None = None) -> dict[str, Distribution]:
        # the authors searched lam over 0.1..0.9; this grid also holds both ends (0: the text term alone,
        # 1: the image term alone), so a search can pick either. Learning rates scale the run's schedule.
        return {"lam": Choice(LAMBDA_GRID), "align_lr": Scaled("frozen_lr", LogUniform(0.2, 5.0)),
                "distill_lr": Scaled("lr", LogUniform(0.2, 5.0))}


@register_algorithm("adip", ADiPHParams, "VL2V-ADiP: Align (projection) -> Distill (backbone) -> Predict (100 cos to T_c)",
                    uses_teacher_images=True, needs_teacher=True, lambda_hparam="lam", headline=True)
class ADiP(Algorithm):

    def __init__(self, ctx, student, hparams: ADiPHParams) -> None:
        super().__init__(ctx, student, hparams)
        self.projection = nn.Linear(student.feature_dim, ctx.teacher_dim, bias=True)
        if hparams.prototypes == "text":
            self.register_buffer("text", ctx.text_classifier.clone())
        else:  # a control: fixed class vectors without text semantics (not named "text": no new class names)
            self.register_buffer("prototypes", fixed_prototypes(hparams.prototypes, *ctx.text_classifier.shape))

    def stages(self) -> list[Stage]:
        s, hp = self.ctx.schedule, self.hparams
        return [
            Stage("align", hp.align_steps or s.frozen_steps, hp.align_lr or s.frozen_lr, True, s.weight_decay),
            Stage("distill", hp.distill_steps or s.steps, hp.distill_lr or s.lr, False, s.weight_decay),
        ]

    def begin_stage(self, stage: Stage) -> None:
        if stage.name == "align":
            set_trainable(self.student, False)
            set_trainable(self.projection, True)
        else:
            set_student_trainable(self.student, self.ctx.schedule.freeze_stages)
            set_trainable(self.projection, False)
        super().begin_stage(stage)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        return self.projection(feats)

    @property
    def class_vectors(self) -> torch.Tensor:
        """``T_c``: the class text embeddings, or a control's fixed prototypes."""
        return self.text if self.hparams.prototypes == "text" else self.prototypes

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return cosine_logits(self.embed(feats), self.class_vectors)

    def head(self) -> nn.Module | None:
        # a control's fixed prototypes are no text head (no embedding output, no class names): its own logits
        return CosineHead(self.projection, self.text) if self.hparams.prototypes == "text" else None

    def text_classes(self) -> torch.Tensor | None:
        return self.text if self.hparams.prototypes == "text" else None

    def set_text_classes(self, text: torch.Tensor) -> None:
        if self.text_classes() is None:
            super().set_text_classes(text)  # a control: no class names to replace
        self.text = text

    def compute_loss(self, minibatches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, float]]:
        b = cat_batches(minibatches)
        assert b.t_img is not None
        z = self.embed(self.features(b))
        loss = vl2v_loss(z, b.t_img, self.class_vectors[b.y], self.hparams.lam)
        return loss, {}


def fixed_prototypes(kind: str, num_classes: int, dim: int, seed: int = 0) -> torch.Tensor:
    """[C, D] unit class vectors without text semantics: ``random`` (Gaussian, normalised) or ``etf`` (a simplex
    equiangular tight frame: pairwise cosine -1/(C-1), the most spread-out C unit vectors; needs D >= C)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        return F.normalize(torch.randn(num_classes, dim, generator=g), dim=-1)
    if dim < num_classes:
        raise ValueError(f"a simplex ETF of {num_classes} classes needs at least {num_classes} dimensions, not {dim}")
    u, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=g))  # D x C, orthonormal columns
    centred = torch.eye(num_classes) - torch.full((num_classes, num_classes), 1.0 / num_classes)
    m = math.sqrt(num_classes / (num_classes - 1)) * (u @ centred)  # D x C
    return F.normalize(m.T.contiguous(), dim=-1)
