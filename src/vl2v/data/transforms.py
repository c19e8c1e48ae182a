"""Seeded, replayable augmentations and the evaluation view.

An augmentation is split into *parameters* (sampled once from a seeded RNG)
and their *application* at a requested output size. The same parameters
rendered at the student's size and at the teacher's size give the same view
of the image, so a teacher embedding computed (and paid for) once can be
replayed exactly when the student sees that view again.

Train augmentation (the VL2V authors' DomainBed settings):
RandomResizedCrop(scale 0.7-1, ratio 3/4-4/3), horizontal flip,
ColorJitter(0.3, 0.3, 0.3, 0.3), RandomGrayscale(0.1).
Evaluation view: resize to S x S.

Training views (:func:`training_views`): K seeded augmentations per image, or with K = 0 the
one identity view (:data:`IDENTITY`: the whole image resized to S x S). Student and teacher
render the same parameters, each at its own input size: the same crop of the same image.

Images travel as uint8 tensors [3, H, W]; outputs are float tensors in [0, 1].
Normalisation (ImageNet, CLIP, ...) belongs to each model, not to the data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Annotated

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageEnhance
from pydantic import Field

from vl2v.data.splits import seed_hash
from vl2v.utils.configclass import Fraction, NonNegFloat, PosFloat, config_dataclass


@dataclass(frozen=True)
class AugParams:
    # crop box as fractions of the image height/width
    top: float
    left: float
    height: float
    width: float
    flip: bool
    jitter_order: tuple[int, ...]  # order of brightness(0), contrast(1), saturation(2), hue(3)
    brightness: float
    contrast: float
    saturation: float
    hue: float
    grayscale: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["jitter_order"] = list(self.jitter_order)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AugParams":
        d = dict(d)
        d["jitter_order"] = tuple(d["jitter_order"])
        return cls(**d)


@config_dataclass(frozen=True)
class AugConfig:
    """The training augmentation's ranges (the VL2V authors' DomainBed settings are the defaults)."""

    scale: tuple[Fraction, Fraction] = (0.7, 1.0)  # RandomResizedCrop: area fraction range
    ratio: tuple[PosFloat, PosFloat] = (3 / 4, 4 / 3)  # RandomResizedCrop: aspect ratio range
    flip_p: Fraction = 0.5
    brightness: NonNegFloat = 0.3  # ColorJitter
    contrast: NonNegFloat = 0.3
    saturation: NonNegFloat = 0.3
    hue: Annotated[float, Field(ge=0.0, le=0.5)] = 0.3
    grayscale_p: Fraction = 0.1


def sample_aug_params(gen: torch.Generator, cfg: AugConfig = AugConfig(), aspect: float = 1.0) -> AugParams:
    """Sample augmentation parameters for an image with ``aspect = width / height``.

    Follows torchvision's RandomResizedCrop sampling (10 tries, then a central
    fallback), on a unit-area image.
    """

    def u(a: float, b: float) -> float:
        return float(torch.empty(1).uniform_(a, b, generator=gen))

    H, W = 1.0, float(aspect)
    area = H * W
    log_ratio = (math.log(cfg.ratio[0]), math.log(cfg.ratio[1]))
    box = None
    for _ in range(10):
        target_area = area * u(cfg.scale[0], cfg.scale[1])
        ar = math.exp(u(*log_ratio))
        w = math.sqrt(target_area * ar)
        h = math.sqrt(target_area / ar)
        if 0 < w <= W and 0 < h <= H:
            top = u(0.0, H - h)
            left = u(0.0, W - w)
            box = (top / H, left / W, h / H, w / W)
            break
    if box is None:
        in_ratio = W / H
        if in_ratio < cfg.ratio[0]:
            w, h = W, W / cfg.ratio[0]
        elif in_ratio > cfg.ratio[1]:
            h, w = H, H * cfg.ratio[1]
        else:
            w, h = W, H
        box = ((H - h) / 2 / H, (W - w) / 2 / W, h / H, w / W)
    flip = u(0, 1) < cfg.flip_p
    order = tuple(int(i) for i in torch.randperm(4, generator=gen))
    b = u(max(0.0, 1 - cfg.brightness), 1 + cfg.brightness)
    c = u(max(0.0, 1 - cfg.contrast), 1 + cfg.contrast)
    s = u(max(0.0, 1 - cfg.saturation), 1 + cfg.saturation)
    h_ = u(-cfg.hue, cfg.hue)
    gray = u(0, 1) < cfg.grayscale_p
    return AugParams(*box, flip, order, b, c, s, h_, gray)


#: the un-augmented training view (K = 0): the whole image, no flip, no colour change. Rendered like any other
#: view (:func:`apply_aug_u8`), so student and teacher see the same pixels of it, each at its own size.
IDENTITY = AugParams(top=0.0, left=0.0, height=1.0, width=1.0, flip=False, jitter_order=(0, 1, 2, 3),
                     brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, grayscale=False)


def training_views(content_hash: str, views: int, view_seed: int = 0, aug: AugConfig = AugConfig(),
                   aspect: float = 1.0) -> list[AugParams]:
    """The stored training views of an image: ``views`` seeded augmentations, or ``[IDENTITY]`` when 0.

    The trainer's view plan and ``vl2v embed`` both call this, so they ask the teacher store for the same views.
    """
    if views == 0:
        return [IDENTITY]
    return [view_params(content_hash, k, view_seed, aug, aspect) for k in range(1, views + 1)]


def view_params(content_hash: str, k: int, view_seed: int = 0, aug: AugConfig = AugConfig(), aspect: float = 1.0) -> AugParams:
    """Augmentation parameters of view ``k`` (1-based) of an image: a pure function of its content.

    Training (the view plan) and ``vl2v embed`` (precomputation) both call this, so they ask the
    teacher store for the same views.
    """
    g = torch.Generator().manual_seed(seed_hash("view", view_seed, content_hash, k))
    return sample_aug_params(g, aug, aspect)


def _resize(img: torch.Tensor, size: int) -> torch.Tensor:
    return TF.resize(img, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def _hue_shift(pil: Image.Image, hue: float) -> Image.Image:
    """Shift hue by ``hue`` (fraction of the circle) in HSV space, as torchvision does for PIL images."""
    h, s, v = pil.convert("HSV").split()
    arr = np.asarray(h, dtype=np.uint8)
    with np.errstate(over="ignore"):
        arr = (arr + np.uint8(int(hue * 255) % 256)).astype(np.uint8)
    return Image.merge("HSV", (Image.fromarray(arr, "L"), s, v)).convert("RGB")


def apply_aug(img: torch.Tensor, p: AugParams, size: int) -> torch.Tensor:
    """Render augmentation ``p`` of uint8 image ``img`` [3,H,W] at ``size`` x ``size``; float [0,1]."""
    return apply_aug_u8(img, p, size).float().div_(255.0)


def apply_aug_u8(img: torch.Tensor, p: AugParams, size: int) -> torch.Tensor:
    """:func:`apply_aug` as uint8 [3, size, size] (what loader workers send: 4x fewer bytes).

    Uses Pillow's C routines (the same operations torchvision's ColorJitter
    applies to PIL images): ~10x faster than tensor ops for one image on a CPU.
    """
    _, H, W = img.shape
    top = int(round(p.top * H))
    left = int(round(p.left * W))
    h = max(1, min(H - top, int(round(p.height * H))))
    w = max(1, min(W - left, int(round(p.width * W))))
    pil = Image.fromarray(np.ascontiguousarray(img.permute(1, 2, 0).numpy()), "RGB")
    pil = pil.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    if p.flip:
        pil = pil.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for i in p.jitter_order:  # a factor of exactly 1 (hue 0) is the identity: skipped (the HSV round trip is lossy)
        if i == 0 and p.brightness != 1.0:
            pil = ImageEnhance.Brightness(pil).enhance(p.brightness)
        elif i == 1 and p.contrast != 1.0:
            pil = ImageEnhance.Contrast(pil).enhance(p.contrast)
        elif i == 2 and p.saturation != 1.0:
            pil = ImageEnhance.Color(pil).enhance(p.saturation)
        elif i == 3 and p.hue != 0.0:
            pil = _hue_shift(pil, p.hue)
    if p.grayscale:
        pil = pil.convert("L").convert("RGB")
    return torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1)


def eval_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """The un-augmented view: resize uint8 [3,H,W] to ``size`` x ``size``; float [0,1]."""
    return _resize(img, size).float().div_(255.0)


def render_view(img: torch.Tensor, params: AugParams | None, size: int) -> torch.Tensor:
    """``params=None`` is the evaluation view (view 0)."""
    return eval_view(img, size) if params is None else apply_aug(img, params, size)


def render_view_u8(img: torch.Tensor, params: AugParams | None, size: int) -> torch.Tensor:
    """:func:`render_view` as uint8; ``render_view_u8(...).float().div_(255)`` equals ``render_view(...)``."""
    return _resize(img, size) if params is None else apply_aug_u8(img, params, size)


def center_view(img: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP-style evaluation view: shorter side to ``size``, centre crop; float [0,1]."""
    x = TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = TF.center_crop(x, [size, size])
    return x.float().div_(255.0).clamp_(0.0, 1.0)


def teacher_view(img: torch.Tensor, params: AugParams | None, size: int) -> torch.Tensor:
    """What a teacher is shown: its own evaluation view, or augmentation ``params`` at its size."""
    return center_view(img, size) if params is None else apply_aug(img, params, size)


def teacher_view_u8(img: torch.Tensor, params: AugParams | None, size: int) -> torch.Tensor:
    """:func:`teacher_view` as uint8 (``.float().div_(255)`` gives the same floats)."""
    if params is None:
        x = TF.resize(img, size, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return TF.center_crop(x, [size, size])
    return apply_aug_u8(img, params, size)
