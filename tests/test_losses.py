"""The losses, pinned on hand-computed values."""

import math

import pytest
import torch

from vl2v.methods.base import cosine_logits
from vl2v.methods.losses import cosine_distance, kd_loss, vl2v_loss


def test_cosine_distance_hand_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [2.0, 0.0]])
    b = torch.tensor([[0.0, 3.0], [1.0, 1.0], [-1.0, 0.0]])
    assert torch.allclose(cosine_distance(a, b), torch.tensor([1.0, 0.0, 2.0]), atol=1e-6)


def test_vl2v_loss_hand_values():
    # z at 0 deg; image target at 90 deg (cos 0); text target at 60 deg (cos 0.5)
    z = torch.tensor([[2.0, 0.0]])
    t_img = torch.tensor([[0.0, 1.0]])
    t_txt = torch.tensor([[0.5, math.sqrt(3) / 2]])
    # lam * (1 - 0) + (1 - lam) * (1 - 0.5)
    for lam, expected in [(0.0, 0.5), (0.5, 0.75), (1.0, 1.0), (0.25, 0.625)]:
        assert vl2v_loss(z, t_img, t_txt, lam).item() == pytest.approx(expected, abs=1e-6)


def test_vl2v_loss_is_batch_mean_and_scale_invariant():
    z = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # row 0: distance 0, row 1: distance 1 (both terms) -> mean 0.5 for any lam
    assert vl2v_loss(z, t, t, 0.3).item() == pytest.approx(0.5, abs=1e-6)
    assert vl2v_loss(10 * z, t, t, 0.3).item() == pytest.approx(0.5, abs=1e-6)


def test_kd_loss_hand_values():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher probs (0.75, 0.25) at T=1
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(kl, abs=1e-6)
    # T=2: teacher logits halved -> probs proportional to (sqrt 3, 1); times T^2 = 4
    p = torch.tensor([math.sqrt(3), 1.0]) / (math.sqrt(3) + 1)
    kl2 = float((p * torch.log(p / 0.5)).sum())
    assert kd_loss(s, t, 2.0).item() == pytest.approx(4 * kl2, abs=1e-6)
    assert kd_loss(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_cosine_logits_scale_and_normalisation():
    z = torch.tensor([[3.0, 4.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert torch.allclose(cosine_logits(z, text), torch.tensor([[60.0, 80.0]]), atol=1e-4)
