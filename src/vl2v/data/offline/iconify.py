"""Iconify JSON icon sets -> standalone SVG documents.

An Iconify set (``icons.json``) holds ``icons`` (name -> ``body`` plus optional
``left``/``top``/``width``/``height``/``rotate``/``hFlip``/``vFlip``), ``aliases``
(name -> ``parent`` plus optional overrides of the same fields) and set-wide
defaults for the box (``left``, ``top``, ``width``, ``height``; Iconify's own
default is a 16x16 box at 0,0). An icon renders as
``<svg viewBox="left top width height">`` + body, after following aliases to
the icon that has the body: box fields of the nearest definition win, flips
toggle and rotations (quarter turns) add up along the chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BOX = ("left", "top", "width", "height")
_ICONIFY_DEFAULTS = {"left": 0, "top": 0, "width": 16, "height": 16}


class IconifyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class ResolvedIcon:
    body: str
    left: float
    top: float
    width: float
    height: float
    rotate: int = 0  # quarter turns clockwise
    h_flip: bool = False
    v_flip: bool = False

    def to_svg(self, size: int | None = None) -> str:
        """A standalone SVG; ``size`` (pixels, longest side) sets width/height attributes."""
        left, top, w, h = self.left, self.top, self.width, self.height
        body = self.body
        flips = []
        if self.h_flip:
            flips.append(f"translate({_n(2 * left + w)} 0) scale(-1 1)")
        if self.v_flip:
            flips.append(f"translate(0 {_n(2 * top + h)}) scale(1 -1)")
        if flips:
            body = f'<g transform="{" ".join(flips)}">{body}</g>'
        rot = self.rotate % 4
        if rot:
            cx, cy = left + w / 2, top + h / 2
            body = f'<g transform="rotate({90 * rot} {_n(cx)} {_n(cy)})">{body}</g>'
            if rot % 2:
                w, h = h, w
                left, top = cx - w / 2, cy - h / 2
        attrs = ""
        if size is not None:
            scale = size / max(w, h)
            attrs = f' width="{_n(w * scale)}" height="{_n(h * scale)}"'
        return ('<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"'
                f'{attrs} viewBox="{_n(left)} {_n(top)} {_n(w)} {_n(h)}">{body}</svg>')


def _n(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


class IconSet:
    def __init__(self, data: dict[str, Any]) -> None:
        self.prefix = data.get("prefix", "")
        self.icons: dict[str, dict[str, Any]] = data.get("icons", {})
        self.aliases: dict[str, dict[str, Any]] = data.get("aliases", {})
        self.defaults = {k: data.get(k, _ICONIFY_DEFAULTS[k]) for k in _BOX}

    @classmethod
    def load(cls, path: str | Path) -> "IconSet":
        return cls(json.loads(Path(path).read_text("utf-8")))

    def __contains__(self, name: str) -> bool:
        return name in self.icons or name in self.aliases

    def resolve(self, name: str) -> ResolvedIcon:
        box: dict[str, float] = {}
        rotate, h_flip, v_flip = 0, False, False
        seen: set[str] = set()
        cur = name
        while True:
            if cur in seen:
                raise IconifyError(f"{self.prefix}: alias loop at {cur!r}")
            seen.add(cur)
            entry = self.icons.get(cur)
            is_icon = entry is not None
            if entry is None:
                entry = self.aliases.get(cur)
            if entry is None:
                raise IconifyError(f"{self.prefix}: no icon or alias named {cur!r}"
                                   + (f" (reached from {name!r})" if cur != name else ""))
            for k in _BOX:
                if k in entry and k not in box:
                    box[k] = entry[k]
            rotate += int(entry.get("rotate", 0))
            h_flip ^= bool(entry.get("hFlip", False))
            v_flip ^= bool(entry.get("vFlip", False))
            if is_icon:
                body = entry["body"]
                break
            cur = entry["parent"]
        full = {k: box.get(k, self.defaults[k]) for k in _BOX}
        return ResolvedIcon(body, full["left"], full["top"], full["width"], full["height"],
                            rotate % 4, h_flip, v_flip)

    def svg(self, name: str, size: int | None = None) -> str:
        return self.resolve(name).to_svg(size)
