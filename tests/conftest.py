"""Shared test fixtures: tiny multi-domain image folders generated on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Tests use tiny models, for which one thread is faster than two fighting over a small core count.
torch.set_num_threads(1)

# Colour per class and drawing style per domain, so a small model can learn the
# task and domains look different: enough signal for end-to-end tests.
_CLASS_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 80, 230), (230, 200, 30), (160, 40, 200), (30, 200, 200)]


def make_image(cls: int, domain: int, idx: int, size: int = 32) -> Image.Image:
    rng = np.random.RandomState(1000 * domain + 37 * cls + idx)
    base = np.full((size, size, 3), 255 if domain % 2 == 0 else 30, dtype=np.uint8)
    colour = np.array(_CLASS_COLOURS[cls % len(_CLASS_COLOURS)], dtype=np.int16)
    jitter = rng.randint(-25, 26, size=3)
    c = np.clip(colour + jitter, 0, 255).astype(np.uint8)
    lo, hi = size // 4 + rng.randint(-2, 3), 3 * size // 4 + rng.randint(-2, 3)
    if domain % 3 == 0:
        base[lo:hi, lo:hi] = c  # filled square
    elif domain % 3 == 1:
        base[lo:hi, lo:lo + 3] = c  # outline
        base[lo:hi, hi - 3:hi] = c
        base[lo:lo + 3, lo:hi] = c
        base[hi - 3:hi, lo:hi] = c
    else:
        yy, xx = np.mgrid[:size, :size]
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
        base[mask] = c  # disc
    noise = rng.randint(0, 20, size=base.shape).astype(np.uint8)
    return Image.fromarray(np.clip(base.astype(np.int16) + noise - 10, 0, 255).astype(np.uint8))


def build_image_folder(root: Path, domains=("art", "photo", "sketch"), classes=("cat", "dog", "horse"),
                       per_class: int = 6, size: int = 32, fmt: str = "png") -> Path:
    """Write ``root/domain/class/NNN.fmt`` images and return ``root``."""
    for di, d in enumerate(domains):
        for ci, c in enumerate(classes):
            folder = root / d / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                make_image(ci, di, i, size).save(folder / f"{i:03d}.{fmt}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    """A tiny valid dataset: 3 domains x 3 classes x 6 images of 32x32 px."""
    return build_image_folder(tmp_path / "tiny")


# --------------------------------------------------------------------------- a tiny teacher
import hashlib  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from vl2v.teachers.base import Teacher  # noqa: E402
from vl2v.teachers.registry import TEACHERS, register_teacher  # noqa: E402


class TinyEncoder(nn.Module):
    """Fixed random conv features plus mean colour (the tiny datasets' class signal) -> dim."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(7)
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc = nn.Linear(8 + 3, dim)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv(x - 0.5)).mean(dim=(2, 3))
        return self.fc(torch.cat([h, 4 * (x.mean(dim=(2, 3)) - 0.5)], dim=1))


class TinyTeacher(Teacher):
    """A deterministic, fast white-box teacher for tests: a small conv net and hashed word vectors."""

    backend = "tiny-test"
    white_box = True

    def __init__(self, dim: int = 16, size: int = 24) -> None:
        self._dim, self._size = dim, size
        self.encoder = TinyEncoder(dim).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.image_calls = 0

    @property
    def embed_dim(self) -> int:
        return self._dim

    @property
    def image_size(self) -> int:
        return self._size

    def identity(self) -> str:
        return f"tiny-test(dim={self._dim},size={self._size})"

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        self.image_calls += 1
        return F.normalize(self.encoder(images.float()), dim=-1)

    def embed_texts(self, texts) -> torch.Tensor:
        out = []
        for t in texts:
            seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
            out.append(torch.randn(self._dim, generator=torch.Generator().manual_seed(seed)))
        return F.normalize(torch.stack(out), dim=-1)

    def image_encoder(self) -> nn.Module:
        return self.encoder


if "tiny-test" not in TEACHERS:
    register_teacher("tiny-test", white_box=True, summary="test-only tiny teacher")(
        lambda spec=None, **opts: TinyTeacher(**{k: int(v) for k, v in opts.items()}))


@pytest.fixture
def tiny_teacher() -> TinyTeacher:
    return TinyTeacher()
