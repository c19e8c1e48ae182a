"""What each algorithm trains, freezes and predicts."""

import copy

import pytest
import torch
import torch.nn.functional as F

from vl2v.config import Schedule
from vl2v.methods import Batch, TaskContext, create_algorithm
from vl2v.students import create_student

C, D = 3, 16


def ctx(freeze_stages=0):
    text = F.normalize(torch.randn(C, D, generator=torch.Generator().manual_seed(1)), dim=-1)
    return TaskContext(num_classes=C, class_names=["a", "b", "c"], source_domains=["x", "y"],
                       text_classifier=text, teacher_dim=D,
                       schedule=Schedule(steps=3, frozen_steps=3, lr=1e-2, frozen_lr=1e-2, freeze_stages=freeze_stages))


def student():
    torch.manual_seed(0)
    return create_student("efficientnet_lite0", pretrained=False)


def batches(n=2, bs=4, with_feats=False):
    g = torch.Generator().manual_seed(3)
    out = []
    for d in range(n):
        b = Batch(y=torch.randint(0, C, (bs,), generator=g), x=torch.rand(bs, 3, 32, 32, generator=g),
                  t_img=F.normalize(torch.randn(bs, D, generator=g), dim=-1), domain=d)
        out.append(b)
    return out


def snapshot(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def changed(before, after, prefix):
    keys = [k for k in before if k.startswith(prefix) and before[k].is_floating_point()]
    assert keys, prefix
    return [k for k in keys if not torch.equal(before[k], after[k])]


def run_stage(algo, stage_name, steps=3):
    stage = next(s for s in algo.stages() if s.name == stage_name)
    algo.begin_stage(stage)
    algo.train()
    before = snapshot(algo)
    for _ in range(steps):
        algo.update(batches())
    return before, snapshot(algo)


def test_adip_align_trains_only_the_projection():
    algo = create_algorithm("adip", ctx(), student())
    before, after = run_stage(algo, "align")
    assert changed(before, after, "student.") == []  # weights and BN statistics untouched
    assert set(changed(before, after, "projection.")) == {"projection.weight", "projection.bias"}
    assert torch.equal(before["text"], after["text"])


def test_adip_distill_trains_backbone_not_projection_and_keeps_bn_stats():
    algo = create_algorithm("adip", ctx(), student())
    before, after = run_stage(algo, "distill")
    assert changed(before, after, "projection.") == []
    moved = changed(before, after, "student.")
    assert any("conv_head.weight" in k for k in moved)
    assert not any("running_mean" in k or "running_var" in k for k in moved)  # frozen BatchNorm
    assert torch.equal(before["text"], after["text"])


def test_freeze_stages_keeps_early_backbone_fixed_while_fine_tuning():
    algo = create_algorithm("adip", ctx(freeze_stages=3), student())
    before, after = run_stage(algo, "distill")
    moved = changed(before, after, "student.")
    assert not any(k.startswith(("student.backbone.conv_stem", "student.backbone.blocks.0.", "student.backbone.blocks.1."))
                   for k in moved)
    assert any(k.startswith("student.backbone.blocks.6.") for k in moved)


@pytest.mark.parametrize("name,stage,backbone_moves", [
    ("erm_lp", "lp", False), ("erm_ft", "ft", True), ("lp_ft", "lp", False), ("lp_ft", "ft", True), ("kd", "ft", True)])
def test_baselines_train_the_right_parts(name, stage, backbone_moves):
    algo = create_algorithm(name, ctx(), student())
    before, after = run_stage(algo, stage)
    assert bool(changed(before, after, "student.")) is backbone_moves
    assert set(changed(before, after, "classifier.")) == {"classifier.weight", "classifier.bias"}


def test_stage_plans():
    s = student()
    assert [(st.name, st.backbone_frozen) for st in create_algorithm("adip", ctx(), s).stages()] == [("align", True), ("distill", False)]
    assert [st.name for st in create_algorithm("lp_ft", ctx(), copy.deepcopy(s)).stages()] == ["lp", "ft"]
    assert create_algorithm("zeroshot", ctx(), None).stages() == []


def test_adip_predict_is_argmax_cosine_to_text_embeddings():
    algo = create_algorithm("adip", ctx(), student()).eval()
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        logits = algo.predict(x)
        z = algo.projection(algo.student(x))
        cos = F.normalize(z, dim=-1) @ F.normalize(ctx().text_classifier, dim=-1).t()
    assert torch.allclose(logits, 100 * cos, atol=1e-4)
    assert torch.equal(logits.argmax(1), cos.argmax(1))


def test_zeroshot_predicts_from_teacher_embeddings():
    c = ctx()
    algo = create_algorithm("zeroshot", c, None)
    t = F.normalize(torch.randn(4, D), dim=-1)
    logits = algo.predict_batch(Batch(y=torch.zeros(4, dtype=torch.long), t_img=t))
    assert torch.equal(logits.argmax(1), (t @ c.text_classifier.t()).argmax(1))


def test_kd_uses_teacher_probabilities():
    c = ctx()
    algo = create_algorithm("kd", c, student(), {"alpha": "1.0", "temperature": "2"})
    algo.begin_stage(algo.stages()[0])
    logs = algo.update(batches())
    assert logs["loss"] == pytest.approx(logs["kl"], rel=1e-5)


@pytest.mark.parametrize("name,hp,msg", [("adip", {"lam": "1.5"}, "lam"), ("adip", {"nope": "1"}, "no hyperparameter"),
                                         ("kd", {"alpha": "-0.1"}, "alpha"), ("kd", {"temperature": "x"}, "expected float")])
def test_bad_hyperparameters_are_refused(name, hp, msg):
    from vl2v.errors import ConfigError

    with pytest.raises(ConfigError, match=msg):
        create_algorithm(name, ctx(), student(), hp)
