"""SWAD LossValley on synthetic loss curves."""

import pytest
import torch
from torch import nn

from vl2v.training.swad import LossValley, SWADConfig


def run(losses, cfg=SWADConfig(n_converge=3, n_tolerance=3, tolerance_ratio=0.3), steps_per_segment=2):
    """Parameter value = segment index, so the average says which segments were included."""
    model = nn.Linear(1, 1, bias=False)
    v = LossValley(model, cfg)
    step = 0
    for i, loss in enumerate(losses):
        for _ in range(steps_per_segment):
            with torch.no_grad():
                model.weight.fill_(float(i))
            v.observe(model, step)
            step += 1
        v.close_segment(loss, step - 1)
    return v, model


def test_no_valley_while_loss_keeps_decreasing():
    v, model = run([1.0, 0.9, 0.8, 0.7, 0.6])
    assert v.averaged_state() is None
    assert v.apply_to(model) is False


def test_valley_start_and_end():
    # min of first window at index 1 -> valley starts when [1,2,3] has its min first (index 1)
    losses = [1.0, 0.50, 0.55, 0.60, 0.52, 0.58, 2.0, 2.0, 2.0, 2.0]
    v, model = run(losses)
    avg = v.averaged_state()
    assert avg is not None
    # threshold = mean(0.50, 0.55, 0.60) * 1.3 = 0.715: segments 1..5 are kept; the valley
    # dies once the next 3 segments' minimum exceeds it (segment 6 onwards)
    assert v.threshold == pytest.approx(0.715)
    assert v.n_segments == 5
    assert avg["weight"].item() == pytest.approx((1 + 2 + 3 + 4 + 5) / 5)
    assert v.summary()["state"] == "dead"


def test_flush_at_end_includes_pending_below_threshold():
    losses = [0.5, 0.6, 0.7, 0.6, 0.65]
    v, model = run(losses)  # converges at segment 0; threshold = 0.6 * 1.3 = 0.78
    assert v.apply_to(model)
    assert v.n_segments == 5
    assert model.weight.item() == pytest.approx(2.0)


def test_segment_average_is_mean_of_steps():
    model = nn.Linear(1, 1, bias=False)
    v = LossValley(model, SWADConfig(n_converge=1, n_tolerance=1))
    for step, val in enumerate([1.0, 2.0, 6.0]):
        with torch.no_grad():
            model.weight.fill_(val)
        v.observe(model, step)
    v.close_segment(0.1, 2)
    assert v.averaged_state()["weight"].item() == pytest.approx(3.0)


def test_state_dict_round_trip():
    losses = [1.0, 0.50, 0.55, 0.60]
    v, model = run(losses)
    v2 = LossValley(model, SWADConfig(n_converge=3, n_tolerance=3, tolerance_ratio=0.3))
    v2.load_state_dict(v.state_dict())
    assert v2.averaged_state()["weight"].item() == pytest.approx(v.averaged_state()["weight"].item())
