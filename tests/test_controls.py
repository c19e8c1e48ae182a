"""The controls of the teacher-quality study: ADiP with class vectors that owe nothing to the class names
(``adip:lam=0,prototypes=etf|random``) and LP-FT with the probe's classifier frozen (``lp_ft:freeze_head=true``)."""

from __future__ import annotations

import pytest
import torch

from helpers import rise_sd_context
from vl2v.methods import create_algorithm
from vl2v.methods.adip import fixed_prototypes
from vl2v.students.registry import create_student


@pytest.mark.parametrize("C,D", [(3, 8), (9, 384), (7, 7)])
def test_etf_prototypes_are_equiangular_and_maximally_spread(C, D):
    p = fixed_prototypes("etf", C, D)
    assert p.shape == (C, D) and torch.allclose(p.norm(dim=1), torch.ones(C), atol=1e-5)
    cos = p @ p.T
    off = cos[~torch.eye(C, dtype=torch.bool)]
    assert torch.allclose(off, torch.full_like(off, -1.0 / (C - 1)), atol=1e-5)
    assert torch.equal(p, fixed_prototypes("etf", C, D))  # the same in every run


def test_random_prototypes_and_bad_etf():
    p = fixed_prototypes("random", 5, 16)
    assert torch.allclose(p.norm(dim=1), torch.ones(5), atol=1e-5) and torch.equal(p, fixed_prototypes("random", 5, 16))
    with pytest.raises(ValueError, match="at least 9 dimensions"):
        fixed_prototypes("etf", 9, 4)


def _student():
    torch.manual_seed(0)
    return create_student("efficientnet_lite0", pretrained=False)


@pytest.mark.parametrize("kind", ["etf", "random"])
def test_adip_with_fixed_prototypes_has_no_text_head(kind):
    from vl2v.serving.predict import has_text_head

    ctx = rise_sd_context()
    algo = create_algorithm("adip", ctx, _student(), {"lam": 0.0, "prototypes": kind})
    assert not hasattr(algo, "text") and not torch.allclose(algo.prototypes, ctx.text_classifier)
    assert torch.equal(algo.class_vectors, fixed_prototypes(kind, *ctx.text_classifier.shape))
    f = torch.randn(2, algo.student.feature_dim)
    expected = 100 * torch.nn.functional.normalize(algo.projection(f), dim=-1) @ algo.prototypes.T
    assert torch.allclose(algo.logits(f), expected, atol=1e-4)
    assert not has_text_head(algo)  # new class names cannot be given to it
    assert has_text_head(create_algorithm("adip", ctx, _student(), {}))


def test_lp_ft_freeze_head_keeps_the_probe_classifier_fixed():
    ctx = rise_sd_context()
    algo = create_algorithm("lp_ft", ctx, _student(), {"freeze_head": True})
    lp, ft = algo.stages()
    algo.begin_stage(lp)
    assert all(p.requires_grad for p in algo.classifier.parameters())
    algo.begin_stage(ft)
    assert not any(p.requires_grad for p in algo.classifier.parameters())
    assert any(p.requires_grad for p in algo.student.parameters())
    plain = create_algorithm("lp_ft", ctx, _student(), {})
    plain.begin_stage(plain.stages()[1])
    assert all(p.requires_grad for p in plain.classifier.parameters())
