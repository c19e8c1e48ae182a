"""Contract tests over every registered algorithm and student (DomainBed's test_models, timm's per-model tests).

For each algorithm: one optimisation step in every stage changes the parameters that
stage trains, ``predict`` returns [B, C] logits, and a save/load round trip through
safetensors reproduces the logits exactly. Capability flags on the registry info agree
with what the algorithm does. Its own prediction head (``head()``) computes its logits, and
its class text embeddings (``text_classes()``), where it has them, name other classes. For each student: features of the declared size, stages to
freeze, and a weights round trip.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vl2v.config import Schedule
from vl2v.errors import ConfigError
from vl2v.methods import Batch, TaskContext, create_algorithm, list_algorithms
from vl2v.students import create_student, list_students
from vl2v.training.checkpoint import load_weights, save_weights

C, D, S = 3, 8, 32
ALGORITHMS = [a.name for a in list_algorithms()]


class TinyEncoder(nn.Module):
    """A differentiable stand-in for a white-box teacher's image tower: [B,3,S,S] in [0,1] -> [B, D]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.fc = nn.Linear(4, D)

    def forward(self, x):
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def context() -> TaskContext:
    g = torch.Generator().manual_seed(1)
    text = F.normalize(torch.randn(C, D, generator=g), dim=-1)

    def prompts(texts):
        return F.normalize(torch.randn(len(texts), D, generator=torch.Generator().manual_seed(len(texts))), dim=-1)

    torch.manual_seed(2)
    return TaskContext(num_classes=C, class_names=["cat", "dog", "horse"], source_domains=["art", "photo"],
                       text_classifier=text, teacher_dim=D, prompts=prompts, teacher_encoder=TinyEncoder(),
                       teacher_image_size=S, schedule=Schedule(steps=2, frozen_steps=2, lr=1e-2, frozen_lr=1e-2))


def build(name: str, overrides: dict | None = None):
    info = next(a for a in list_algorithms() if a.name == name)
    torch.manual_seed(0)
    student = create_student("efficientnet_lite0", pretrained=False) if (info.has_student and info.uses_registry_student) else None
    if student is not None:
        student.image_size = S
    return info, create_algorithm(name, context(), student, overrides)


def minibatches(n_domains=2, bs=3):
    g = torch.Generator().manual_seed(3)
    return [Batch(y=torch.randint(0, C, (bs,), generator=g), x=torch.rand(bs, 3, S, S, generator=g),
                  t_img=F.normalize(torch.randn(bs, D, generator=g), dim=-1), domain=d) for d in range(n_domains)]


def logits_of(algo, info, x, t_img):
    algo.eval()
    with torch.no_grad():
        b = Batch(y=torch.zeros(x.shape[0], dtype=torch.long), x=x if info.has_student else None, t_img=t_img)
        return algo.predict_batch(b)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_one_step_per_stage_trains_something(name):
    info, algo = build(name)
    stages = algo.stages()
    assert bool(stages) == info.needs_training
    for stage in stages:
        algo.begin_stage(stage)
        algo.train()
        before = {k: v.detach().clone() for k, v in algo.named_parameters() if v.requires_grad}
        assert before, f"{name}/{stage.name} trains no parameter"
        logs = algo.update(minibatches())
        assert torch.isfinite(torch.tensor(logs["loss"]))
        moved = [k for k, v in algo.named_parameters() if k in before and not torch.equal(before[k], v)]
        assert moved, f"{name}/{stage.name}: one step changed no trainable parameter"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_predict_shape_and_save_load_round_trip(name, tmp_path):
    info, algo = build(name)
    x = torch.rand(5, 3, S, S, generator=torch.Generator().manual_seed(4))
    t_img = F.normalize(torch.randn(5, D, generator=torch.Generator().manual_seed(5)), dim=-1)
    for stage in algo.stages()[:1]:  # move the weights away from their initial values first
        algo.begin_stage(stage)
        algo.train()
        algo.update(minibatches())
    out = logits_of(algo, info, x, t_img)
    assert out.shape == (5, C) and torch.isfinite(out).all()
    save_weights(tmp_path / "model.safetensors", algo.state_dict())
    _, fresh = build(name)
    fresh.load_state_dict(load_weights(tmp_path / "model.safetensors")[0], strict=True)
    assert torch.equal(logits_of(fresh, info, x, t_img), out)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_capability_flags_match_the_algorithm(name):
    info, algo = build(name)
    assert algo.uses_teacher_images == info.uses_teacher_images and algo.has_student == info.has_student
    if info.uses_teacher_images:
        assert info.needs_teacher
    if not info.has_student:
        assert algo.student is None
    if not info.uses_registry_student:
        assert algo.student is not None  # built its own (VL2V-SD: a copy of the teacher's encoder)
    if info.lambda_hparam:  # the report's lambda-sweep figure reads this hyperparameter (and its default)
        assert isinstance(getattr(algo.hparams, info.lambda_hparam), float)
    if info.needs_white_box:
        blind = copy.copy(context())
        blind.teacher_encoder = None
        with pytest.raises(ConfigError, match="white-box"):
            create_algorithm(name, blind, None)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_teacher_guard_is_one_config_error(name):
    """create_algorithm refuses a context without the teacher parts the flags declare, with one error type that
    names the algorithm and what is missing; an algorithm that needs no teacher builds without one."""
    info = next(a for a in list_algorithms() if a.name == name)
    bare = copy.copy(context())
    bare.text_classifier = bare.teacher_dim = bare.prompts = bare.teacher_encoder = None
    student = create_student("efficientnet_lite0", pretrained=False) if (info.has_student and info.uses_registry_student) else None
    if not (info.needs_teacher or info.uses_teacher_images or info.uses_teacher_text or info.needs_white_box):
        create_algorithm(name, bare, student)
        return
    with pytest.raises(ConfigError, match=rf"^{name} needs a (white-box )?teacher .*missing: text classifier, embedding size"):
        create_algorithm(name, bare, student)
    if info.uses_teacher_text:
        no_text = copy.copy(context())
        no_text.prompts = None
        with pytest.raises(ConfigError, match="missing: text embeddings"):
            create_algorithm(name, no_text, student)


# every registered algorithm, and the controls that change its head (ADiP's fixed prototypes: no text classes)
HEAD_CASES = [(a, None) for a in ALGORITHMS] + [("adip", {"lam": 0.0, "prototypes": p}) for p in ("etf", "random")]


def features_of(algo, n: int = 5) -> torch.Tensor:
    """Random features of the algorithm's ``logits`` input: the student's (the teacher's embeddings without one)."""
    dim = algo.student.feature_dim if algo.student is not None else D
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("name,overrides", HEAD_CASES)
def test_head_computes_the_algorithms_logits(name, overrides):
    """``head()``, where the algorithm has one, maps features to exactly its ``logits`` (export bakes it in)."""
    _, algo = build(name, overrides)
    algo.eval()
    f = features_of(algo)
    head = algo.head()
    with torch.no_grad():
        ref = algo.logits(f)
        assert ref.shape == (len(f), C)
        if head is not None:
            assert torch.allclose(head(f), ref, atol=1e-4, rtol=1e-5)
            assert all(any(p is q for q in algo.parameters()) for p in head.parameters())  # shared, not copied


@pytest.mark.parametrize("name,overrides", HEAD_CASES)
def test_text_classes_name_other_classes(name, overrides):
    """An algorithm with class text embeddings predicts over whatever classes it is given (and gets its own back
    after ``with_text_classes``); one without refuses new ones with a TypeError."""
    _, algo = build(name, overrides)
    algo.eval()
    f = features_of(algo)
    own = algo.text_classes()
    other = F.normalize(torch.randn(C + 2, D, generator=torch.Generator().manual_seed(8)), dim=-1)
    if own is None:
        with pytest.raises(TypeError, match="takes no new class names"):
            algo.set_text_classes(other)
        with pytest.raises(TypeError, match="takes no new class names"):
            with algo.with_text_classes(other):
                pass
        return
    assert own.shape == (C, D)
    with torch.no_grad():
        before = algo.logits(f)
        with algo.with_text_classes(other):
            assert algo.text_classes() is other
            wide = algo.logits(f)
            assert torch.allclose(algo.head()(f), wide, atol=1e-4, rtol=1e-5)
        assert algo.text_classes() is own and torch.equal(algo.logits(f), before)
    assert wide.shape == (len(f), C + 2)
    with torch.no_grad():  # the embeddings of its own classes give its own logits
        with algo.with_text_classes(torch.cat([own, other])):
            assert torch.allclose(algo.logits(f)[:, :C], before, atol=1e-4)


def test_the_algorithms_with_text_classes_are_those_predict_names():
    """`vl2v predict --classes` names (and loads only) the runs of these algorithms."""
    from vl2v.serving.predict import TEXT_HEAD_ALGORITHMS

    assert tuple(a for a in ALGORITHMS if build(a)[1].text_classes() is not None) == TEXT_HEAD_ALGORITHMS


@pytest.mark.parametrize("name", [s.name for s in list_students()])
def test_student_contract(name, tmp_path):
    info = next(s for s in list_students() if s.name == name)
    torch.manual_seed(0)
    student = create_student(name, pretrained=False).eval()
    x = torch.rand(2, 3, info.image_size, info.image_size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        feats = student(x)
    assert feats.shape == (2, info.feature_dim) == (2, student.feature_dim)
    stages = student.stages()
    assert len(stages) >= 2
    student.freeze_prefix(1)
    assert all(not p.requires_grad for p in stages[0].parameters())
    assert any(p.requires_grad for p in stages[-1].parameters())
    save_weights(tmp_path / "s.safetensors", student.state_dict())
    torch.manual_seed(1)
    other = create_student(name, pretrained=False).eval()
    other.load_state_dict(load_weights(tmp_path / "s.safetensors")[0])
    with torch.no_grad():
        assert torch.equal(other(x), feats)
