"""Decoding images robustly into RGB.

Every image that reaches a model goes through :func:`load_rgb`: palette, 16-bit,
CMYK, grayscale and alpha images are converted to 8-bit RGB (alpha composited
on white, the offline benchmark's convention). Decompression bombs are refused.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# Images larger than this many pixels are refused (PIL warns at this size and
# errors at twice it); 89 Mpixel is PIL's own default.
MAX_PIXELS = 89_478_485


class ImageDecodeError(ValueError):
    """An image file could not be turned into RGB pixels; ``reason`` says why."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        scale = 255.0 / (65535.0 if hi > 255 else 255.0)
        img = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path: str | os.PathLike[str], max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``path`` fully and return an RGB image, or raise :class:`ImageDecodeError`."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageDecodeError(path, f"image too large ({w}x{h} pixels > {max_pixels}): possible decompression bomb")
                if w < 1 or h < 1:
                    raise ImageDecodeError(path, "image has zero size")
                prev = ImageFile.LOAD_TRUNCATED_IMAGES
                ImageFile.LOAD_TRUNCATED_IMAGES = False
                try:
                    img.load()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = prev
                return _to_rgb(img).copy()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(path, f"decompression bomb refused ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image (unrecognised format)") from None
    except OSError as exc:
        raise ImageDecodeError(path, f"unreadable or truncated image ({exc})") from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(path, f"corrupt image ({exc})") from None
