"""Losses shared by the algorithms, each a small pure function."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row ``1 - cos(a, b)``."""
    return 1.0 - F.cosine_similarity(a, b, dim=-1)


def vl2v_loss(z: torch.Tensor, t_img: torch.Tensor, t_text_y: torch.Tensor, lam: float) -> torch.Tensor:
    """VL2V-ADiP / VL2V-SD: ``lam * (1 - cos(z, f_I(x))) + (1 - lam) * (1 - cos(z, T_y))``, batch mean.

    ``lam`` weights the image-embedding term, ``1 - lam`` the text term.
    """
    return (lam * cosine_distance(z, t_img) + (1.0 - lam) * cosine_distance(z, t_text_y)).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, batch mean."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits / t, dim=-1)
    return (t * t) * F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
