"""The teacher alone: ``argmax_c cos(f_I(x), T_c)``. No student, no training."""

from __future__ import annotations

import torch
from torch import nn

from vl2v.config import config_dataclass
from vl2v.methods.base import Algorithm, Batch, cosine_logits
from vl2v.methods.heads import CosineHead
from vl2v.methods.registry import register_algorithm


@config_dataclass
class ZeroShotHParams:
    pass


@register_algorithm("zeroshot", ZeroShotHParams, "teacher zero-shot: argmax_c cos(f_I(x), T_c)",
                    uses_teacher_images=True, needs_teacher=True, needs_training=False, has_student=False)
class ZeroShot(Algorithm):

    def __init__(self, ctx, student, hparams) -> None:
        super().__init__(ctx, None, hparams)
        self.register_buffer("text", ctx.text_classifier.clone())

    def predict_batch(self, b: Batch) -> torch.Tensor:
        if b.t_img is None:
            raise ValueError("zeroshot predicts from the teacher's image embeddings (Batch.t_img)")
        return self.logits(b.t_img)

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Class logits from the teacher's image embeddings (its features: there is no student)."""
        return cosine_logits(feats, self.text)

    def head(self) -> nn.Module:
        return CosineHead(None, self.text)  # on the teacher's image embeddings

    def text_classes(self) -> torch.Tensor:
        return self.text

    def set_text_classes(self, text: torch.Tensor) -> None:
        self.text = text

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise TypeError("zeroshot has no student; evaluate it through the teacher store (Batch.t_img)")
