"""Rendering (SVG, font glyphs, raster files) and the shared preprocessing.

Preprocessing removes trivial domain cues: every image is composited onto
white, cropped to the bounding box of its visible, non-white pixels, padded
to a square with white (object centred) and resized with a fixed filter.
PNG encoding is deterministic (no timestamps or text chunks), so the same
source bytes always give the same output bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

RESAMPLE = Image.Resampling.LANCZOS
ALPHA_THRESHOLD = 16  # alpha above this counts as visible
WHITE_THRESHOLD = 24  # a channel below 255 - this counts as non-white
MIN_FOREGROUND_FRACTION = 0.003  # of the rendered canvas; less is a near-empty render
MIN_BOX_SIDE = 8  # pixels of the rendered canvas


class EmptyImageError(ValueError):
    """The picture has (almost) nothing visible on a white background."""


@dataclass(frozen=True)
class PreparedImage:
    image: Image.Image  # RGB, square
    box: tuple[int, int, int, int]  # crop box in the source canvas
    source_size: tuple[int, int]
    foreground_fraction: float


def to_rgba(img: Image.Image) -> Image.Image:
    if img.mode == "RGBA":
        return img
    if img.mode in ("P", "LA", "L", "1", "RGB", "PA", "I;16", "CMYK", "I", "F"):
        if img.mode == "P" and "transparency" in img.info:
            return img.convert("RGBA")
        if img.mode in ("I;16", "I", "F"):
            img = img.convert("L")
        return img.convert("RGBA")
    return img.convert("RGBA")


def on_white(img: Image.Image) -> Image.Image:
    """Composite an image onto an opaque white background; return RGB."""
    rgba = to_rgba(img)
    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def foreground_mask(img: Image.Image) -> np.ndarray:
    """Pixels that are visible (alpha) and not white once composited on white."""
    rgba = to_rgba(img)
    alpha = np.asarray(rgba.getchannel("A"))
    rgb = np.asarray(on_white(rgba), dtype=np.int16)
    non_white = (255 - rgb).max(axis=2) > WHITE_THRESHOLD
    return (alpha > ALPHA_THRESHOLD) & non_white


def content_box(img: Image.Image) -> tuple[tuple[int, int, int, int], float]:
    mask = foreground_mask(img)
    frac = float(mask.mean()) if mask.size else 0.0
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise EmptyImageError("nothing visible on white")
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return box, frac


def square_pad(img: Image.Image, fill=(255, 255, 255)) -> Image.Image:
    w, h = img.size
    side = max(w, h)
    if w == h:
        return img
    out = Image.new("RGB", (side, side), fill)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def prepare(img: Image.Image, size: int) -> PreparedImage:
    """White background, crop to content, square pad, resize to ``size``."""
    box, frac = content_box(img)
    bw, bh = box[2] - box[0], box[3] - box[1]
    if frac < MIN_FOREGROUND_FRACTION or max(bw, bh) < MIN_BOX_SIDE:
        raise EmptyImageError(f"near-empty render: {frac:.2%} foreground, content box {bw}x{bh}")
    rgb = on_white(img).crop(box)
    sq = square_pad(rgb)
    if sq.size != (size, size):
        sq = sq.resize((size, size), RESAMPLE)
    return PreparedImage(sq, box, img.size, frac)


def encode_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def dhash(img: Image.Image, n: int = 8) -> int:
    """Difference hash of a greyscale thumbnail: near-duplicates differ in few bits."""
    g = np.asarray(img.convert("L").resize((n + 1, n), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (g[:, 1:] > g[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


# --------------------------------------------------------------------- renderers
def render_svg(svg: bytes | str, longest: int) -> Image.Image:
    """Render SVG so that its page is about ``longest`` pixels wide (aspect kept).

    A page much taller than wide is rendered again by height, so the longer
    side never exceeds ``4 * longest``. External resources are never fetched
    (cairosvg's safe mode: only ``data:`` URLs).
    """
    import cairosvg  # heavy; only when rendering

    data = svg.encode("utf-8") if isinstance(svg, str) else svg
    # parent_* resolve percentage sizes ('100%') of the root element
    kw = dict(unsafe=False, parent_width=longest, parent_height=longest)
    png = cairosvg.svg2png(bytestring=data, output_width=longest, **kw)
    im = Image.open(io.BytesIO(png))
    if im.height > 4 * longest:
        png = cairosvg.svg2png(bytestring=data, output_height=longest, **kw)
        im = Image.open(io.BytesIO(png))
    im.load()
    return to_rgba(im)


def load_raster(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return to_rgba(im)


def draw_glyph(font_path: str, text: str, px: int = 384) -> Image.Image:
    """Draw ``text`` in black with a TrueType font onto a transparent canvas."""
    font = ImageFont.truetype(font_path, px, layout_engine=ImageFont.Layout.BASIC)
    side = px * 2
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((side // 2, side // 2), text, font=font, fill=(0, 0, 0, 255), anchor="mm")
    return canvas


def glyph_mask_bytes(font_path: str, text: str, px: int = 64) -> bytes:
    font = ImageFont.truetype(font_path, px, layout_engine=ImageFont.Layout.BASIC)
    return bytes(font.getmask(text)) + repr(font.getmask(text).size).encode()
