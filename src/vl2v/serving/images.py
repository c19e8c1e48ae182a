"""Decoding untrusted image uploads into teacher inputs, with limits.

Only PNG and JPEG are accepted, recognised by their magic bytes (anything else
is 415 before any decoder runs). Dimensions are read from the header and
checked against the pixel limits *before* pixels are decoded, so a
decompression bomb costs a header parse. Conversion to RGB is the one every
dataset image goes through (:mod:`vl2v.data.images`: palette, 16-bit, CMYK,
grayscale; alpha composited on white), and an image that is not already
``S x S`` gets the teacher's own evaluation view (shorter side to S, centre
crop: :func:`vl2v.data.transforms.center_view`), exactly what a local teacher is shown.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from vl2v.data.images import _to_rgb
from vl2v.data.transforms import center_view
from vl2v.teachers.wire import JPEG_MAGIC, PNG_MAGIC


class ImageRejected(Exception):
    """An upload the service refuses; ``status`` is the HTTP status (413, 415 or 422)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class ImageLimits:
    max_image_pixels: int = 4096 * 4096
    max_request_pixels: int = 64 * 1024 * 1024


def sniff_format(data: bytes) -> str | None:
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    return None


def b64_image(s: str, index: int) -> bytes:
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected(422, "invalid_base64", f"images[{index}] is not valid base64") from None
    if not data:
        raise ImageRejected(422, "empty_image", f"images[{index}] is empty")
    return data


def _open(data: bytes, index: int) -> Image.Image:
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected(415, "unsupported_image_type",
                            f"images[{index}] is not a PNG or JPEG file (unrecognised magic bytes)")
    try:
        img = Image.open(io.BytesIO(data), formats=[fmt])
        img.size  # noqa: B018 - header parsed
    except Image.DecompressionBombError as exc:
        raise ImageRejected(413, "image_too_large", f"images[{index}]: {exc}") from None
    except Exception as exc:  # any decoder failure on untrusted bytes is the client's image, never a 5xx
        raise ImageRejected(422, "undecodable_image", f"images[{index}]: cannot read {fmt} header ({type(exc).__name__}: {exc})") from None
    return img


def decode_batch(blobs: list[bytes], size: int, limits: ImageLimits) -> torch.Tensor:
    """Encoded images -> [B, 3, size, size] float32 in [0, 1], or :class:`ImageRejected`."""
    opened = [_open(b, i) for i, b in enumerate(blobs)]
    try:
        total = 0
        for i, img in enumerate(opened):
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageRejected(422, "undecodable_image", f"images[{i}] has zero size")
            if w * h > limits.max_image_pixels:
                raise ImageRejected(413, "image_too_large",
                                    f"images[{i}] is {w}x{h} = {w * h} pixels, over the limit of "
                                    f"{limits.max_image_pixels} per image (decompression bombs are refused)")
            total += w * h
        if total > limits.max_request_pixels:
            raise ImageRejected(413, "request_too_many_pixels",
                                f"the batch has {total} pixels in all, over the limit of {limits.max_request_pixels}: "
                                f"send fewer or smaller images per request")
        out = torch.empty((len(opened), 3, size, size), dtype=torch.float32)
        for i, img in enumerate(opened):
            out[i] = _pixels(img, i, size)
        return out
    finally:
        for img in opened:
            img.close()


def _pixels(img: Image.Image, index: int, size: int) -> torch.Tensor:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
            rgb = _to_rgb(img)
            arr = np.asarray(rgb, dtype=np.uint8)
    except MemoryError:
        raise ImageRejected(413, "image_too_large", f"images[{index}] is too large to decode") from None
    except Exception as exc:  # truncated data, bad chunks, zlib errors, text-chunk bombs, ...
        raise ImageRejected(422, "undecodable_image", f"images[{index}] cannot be decoded ({type(exc).__name__}: {exc})") from None
    t = torch.from_numpy(arr.copy()).permute(2, 0, 1)  # uint8 [3, H, W]
    if t.shape[1] == size and t.shape[2] == size:
        return t.float().div_(255.0)
    return center_view(t, size)


def load_image(path, size: int) -> torch.Tensor:
    """Decode the image file ``path`` and return the evaluation view: float [3, size, size] in [0, 1] (what
    ``vl2v predict``, ``eval`` and export's parity check feed a student)."""
    from vl2v.data.images import load_rgb
    from vl2v.data.transforms import eval_view

    img = load_rgb(path)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    return eval_view(arr, size)
