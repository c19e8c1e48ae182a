"""Shared test fixtures: tiny multi-domain image folders generated on the fly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
