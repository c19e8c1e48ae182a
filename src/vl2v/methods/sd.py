"""VL2V-SD: the white-box variant. The student *is* a copy of the teacher's image encoder.

No projection and no Align stage: the copy is fine-tuned with the VL2V loss on
its own normalised output, ``lam * (1 - cos(z, f_I(x))) + (1 - lam) * (1 - cos(z, T_y))``,
and predicts with ``100 * cos(z, T_c)``. The copy is independent of the frozen
teacher (a deep copy made before training), so training never changes the
teacher's outputs. Inputs are rendered at the teacher's own input size, or at
``image_size`` (a cheaper copy for convolutional teachers; the teacher targets
``f_I(x)`` stay those of the teacher at its own size).
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from vl2v.config import Fraction, NonNegFloat, NonNegInt, config_dataclass
from vl2v.errors import ConfigError
from vl2v.methods.base import Algorithm, Batch, Stage, cat_batches, cosine_logits, set_trainable
from vl2v.methods.heads import CosineHead
from vl2v.methods.losses import vl2v_loss
from vl2v.methods.registry import register_algorithm
from vl2v.methods.search import LAMBDA_GRID, Choice, Distribution, LogUniform, Scaled
from vl2v.students.registry import Student


@config_dataclass
class SDHParams:
    lam: Fraction = 0.5
    lr: NonNegFloat = 0.0
    steps: NonNegInt = 0
    image_size: NonNegInt = 0  # the copy's input size; 0: the teacher's own

    @classmethod
    def search_space(cls, dataset: str | None = None) -> dict[str, Distribution]:
        return {"lam": Choice(LAMBDA_GRID), "lr": Scaled("lr", LogUniform(0.2, 5.0))}  # lam: both ends, as ADiP's


def student_from_encoder(encoder: nn.Module, dim: int, image_size: int, freeze_bn: bool = True) -> Student:
    """Wrap a (copied) teacher image encoder as a Student; it normalises its input itself."""
    return Student("teacher-copy", encoder, dim, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), image_size,
                   lambda m: [m], lambda m, x: m(x), "teacher-copy", freeze_bn)


@register_algorithm("sd", SDHParams, "VL2V-SD (white box): fine-tune a copy of the teacher's image encoder, predict with T_c",
                    uses_teacher_images=True, needs_teacher=True, needs_white_box=True, uses_registry_student=False)
class SD(Algorithm):

    def __init__(self, ctx, student, hparams: SDHParams) -> None:
        teacher_size = ctx.teacher_image_size or 224
        size = hparams.image_size if hparams and hparams.image_size else teacher_size
        encoder = copy.deepcopy(ctx.teacher_encoder)
        if size != teacher_size:
            if hasattr(encoder, "image_size"):  # the teacher's encoders resize their input to this
                encoder.image_size = size
            try:
                with torch.no_grad():
                    encoder.eval()(torch.zeros(1, 3, size, size))
            except Exception as exc:
                raise ConfigError(f"sd:image_size={size}: this teacher's image encoder does not run at {size} px "
                                  f"({type(exc).__name__}: {exc}); leave image_size at 0 (its own "
                                  f"{teacher_size} px)") from None
        own = student_from_encoder(encoder, ctx.teacher_dim, size)
        super().__init__(ctx, own, hparams)
        self.register_buffer("text", ctx.text_classifier.clone())
        self.image_size = own.image_size

    def stages(self) -> list[Stage]:
        s, hp = self.ctx.schedule, self.hparams
        return [Stage("finetune", hp.steps or s.steps, hp.lr or s.lr, False, s.weight_decay)]

    def begin_stage(self, stage: Stage) -> None:
        set_trainable(self.student, True)
        super().begin_stage(stage)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        return cosine_logits(feats, self.text)

    def head(self) -> nn.Module:
        return CosineHead(None, self.text)  # the copy's features are in the teacher's text space already

    def text_classes(self) -> torch.Tensor:
        return self.text

    def set_text_classes(self, text: torch.Tensor) -> None:
        self.text = text

    def compute_loss(self, minibatches: Sequence[Batch]) -> tuple[torch.Tensor, dict[str, float]]:
        b = cat_batches(minibatches)
        assert b.t_img is not None
        z = self.features(b)
        loss = vl2v_loss(z, b.t_img, self.text[b.y], self.hparams.lam)
        return loss, {}
