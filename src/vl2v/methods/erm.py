"""ERM baselines: linear probe, full fine-tune, and LP-FT (probe, then fine-tune from it).

Loss: cross-entropy of a linear classifier on the student's features.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vl2v.config import NonNegFloat, NonNegInt, config_dataclass
from vl2v.methods.base import Algorithm, Batch, Stage, cat_batches, set_student_trainable, set_trainable
from vl2v.methods.heads import LinearHead
from vl2v.methods.registry import register_algorithm
from vl2v.methods.search import Distribution, LogUniform, Scaled


@config_dataclass
class ERMHParams:
    """``lr``/``steps`` of 0 take the run's schedule."""

    lr: NonNegFloat = 0.0
    steps: NonNegInt = 0
    lp_lr: NonNegFloat = 0.0
    lp_steps: NonNegInt = 0
    # a control for LP-FT (and ERM-FT after a head warm-up): keep the probe's classifier frozen while the
    # backbone fine-tunes (a fixed linear head, as ADiP keeps its text head fixed)
    freeze_head: bool = False

    @classmethod
    def search_space(cls, dataset: str | None = None) -> dict[str, Distribution]:
        # shared by erm_lp (uses lp_lr only), erm_ft (lr only) and lp_ft (both); DomainBed's ERM searches
        # lr ~ 10**U(-5, -3.5) absolute, about LogUniform(0.2, 5) x the paper's 5e-5
        return {"lr": Scaled("lr", LogUniform(0.2, 5.0)), "lp_lr": Scaled("frozen_lr", LogUniform(0.2, 5.0))}


class _ERMBase(Algorithm):
    plan: tuple[str, ...] = ()

    def __init__(self, ctx, student, hparams: ERMHParams) -> None:
        super().__init__(ctx, student, hparams)
        self.classifier = nn.Linear(student.feature_dim, ctx.num_classes)

    def stages(self) -> list[Stage]:
        s, hp = self.ctx.schedule, self.hparams
        out = []
        plan = ("lp", *self.plan) if s.head_warmup and self.plan == ("ft",) else self.plan  # warm-up: ERM-FT = LP-FT
        for kind in plan:
            if kind == "lp":
                out.append(Stage("lp", hp.lp_steps or s.frozen_steps, hp.lp_lr or s.frozen_lr, True, s.weight_decay))
            else:
                out.append(Stage("ft", hp.steps or s.steps, hp.lr or s.lr, False, s.weight_decay))
        return out

    def begin_stage(self, stage: Stage) -> None:
        if stage.backbone_frozen:
            set_trainable(self.student, False)
        else:
            set_student_trainable(self.student, self.ctx.schedule.freeze_stages)
        set_trainable(self.classifier, stage.backbone_frozen or not self.hparams.freeze_head)
        super().begin_stage(stage)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats)

    def head(self) -> nn.Module:
        return LinearHead(self.classifier)

    def compute_loss(self, minibatches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, float]]:
        b = cat_batches(minibatches)
        loss = F.cross_entropy(self.logits(self.features(b)), b.y)
        return loss, {}


@register_algorithm("erm_lp", ERMHParams, "ERM linear probe: frozen backbone, linear classifier, cross-entropy")
class ERMLinearProbe(_ERMBase):
    plan = ("lp",)


@register_algorithm("erm_ft", ERMHParams, "ERM full fine-tune (DomainBed ERM): backbone + linear classifier, cross-entropy")
class ERMFineTune(_ERMBase):
    plan = ("ft",)


@register_algorithm("lp_ft", ERMHParams, "LP-FT: linear probe, then fine-tune everything from the best probe")
class LPFT(_ERMBase):
    plan = ("lp", "ft")
