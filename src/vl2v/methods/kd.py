"""Standard (Hinton) knowledge distillation from the teacher's zero-shot probabilities.

``loss = (1 - alpha) * CE(student, y) + alpha * T^2 * KL(p_teacher^T || p_student^T)``
with teacher logits ``100 * cos(f_I(x), T_c)`` (CLIP's logit scale).
"""

from __future__ import annotations

from typing import Annotated, Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vl2v.config import Fraction, NonNegFloat, NonNegInt, config_dataclass
from vl2v.methods.base import Algorithm, Batch, Stage, cat_batches, cosine_logits, set_student_trainable, set_trainable
from vl2v.methods.heads import LinearHead
from vl2v.methods.losses import kd_loss
from vl2v.methods.registry import register_algorithm
from vl2v.methods.search import Choice, Distribution, LogUniform, Scaled, Uniform


@config_dataclass
class KDHParams:
    alpha: Fraction = 0.5  # weight of the distillation term
    temperature: Annotated[float, Field(gt=0.0)] = 4.0
    lr: NonNegFloat = 0.0
    steps: NonNegInt = 0

    @classmethod
    def search_space(cls, dataset: str | None = None) -> dict[str, Distribution]:
        return {"alpha": Uniform(0.1, 0.9), "temperature": Choice([1.0, 2.0, 4.0, 8.0]),
                "lr": Scaled("lr", LogUniform(0.2, 5.0))}


@register_algorithm("kd", KDHParams, "KD: cross-entropy + T^2 KL to the teacher's zero-shot probabilities",
                    uses_teacher_images=True, needs_teacher=True)
class KD(Algorithm):

    def __init__(self, ctx, student, hparams: KDHParams) -> None:
        super().__init__(ctx, student, hparams)
        self.classifier = nn.Linear(student.feature_dim, ctx.num_classes)
        self.register_buffer("text", ctx.text_classifier.clone())

    def stages(self) -> list[Stage]:
        s, hp = self.ctx.schedule, self.hparams
        return self.warmup_stages() + [Stage("ft", hp.steps or s.steps, hp.lr or s.lr, False, s.weight_decay)]

    def begin_stage(self, stage: Stage) -> None:
        if stage.backbone_frozen:  # head warm-up: the classifier alone
            set_trainable(self.student, False)
        else:
            set_student_trainable(self.student, self.ctx.schedule.freeze_stages)
        super().begin_stage(stage)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats)

    def head(self) -> nn.Module:
        return LinearHead(self.classifier)  # T_c (buffer ``text``) only shapes the loss: no text classes

    def compute_loss(self, minibatches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, float]]:
        b = cat_batches(minibatches)
        assert b.t_img is not None
        logits = self.logits(self.features(b))
        ce = F.cross_entropy(logits, b.y)
        kl = kd_loss(logits, cosine_logits(b.t_img, self.text), self.hparams.temperature)
        loss = (1 - self.hparams.alpha) * ce + self.hparams.alpha * kl
        return loss, {"ce": float(ce.detach()), "kl": float(kl.detach())}
