"""The LiT build's (icon, caption) pairs: caption cleaning, pair collection from Iconify sets, and the
concept split (held-out concepts are never trained on)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class Pair:
    """One icon and its caption. ``svg`` is the picture; ``concept`` groups pairs for the split."""

    id: str
    source: str  # set key
    caption: str
    svg: bytes
    views: tuple[str, ...] = ("orig",)
    member: str = ""

    @property
    def concept(self) -> str:
        return self.caption

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.svg).hexdigest()


_TONES = ("-light", "-medium-light", "-medium", "-medium-dark", "-dark", "-default")
_NUM = re.compile(r"(-\d+)+$")
_SKIP_PREFIXES = ("brand-", "alpha-", "numeric-", "format-", "keyboard-", "language-")


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[-_\s]+", name.lower()) if w]


def segment(token: str, vocab: set[str]) -> str:
    """Split a run-together name ('oncomingautomobile') into known words, if it splits completely."""
    if token in vocab or len(token) > 40:
        return token
    n = len(token)
    best: list[list[str] | None] = [None] * (n + 1)
    best[0] = []
    for i in range(1, n + 1):
        for j in range(max(0, i - 20), i):
            w = token[j:i]
            if best[j] is not None and (w in vocab and (len(w) > 1 or w in ("a",))):
                cand = best[j] + [w]
                if best[i] is None or len(cand) < len(best[i]):
                    best[i] = cand
    return " ".join(best[n]) if best[n] else token


def clean_caption(name: str) -> str:
    name = _NUM.sub("", name.lower())
    return " ".join(_words(name))


def unicode_names(emoji_json: Path | None) -> tuple[dict[str, str], set[str]]:
    """(code point -> Unicode name, the names' words and short names' words) from emoji-datasource's
    ``emoji.json``; empty without it."""
    uni: dict[str, str] = {}
    vocab: set[str] = set()
    if emoji_json is None or not emoji_json.is_file():
        return uni, vocab
    for r in json.loads(emoji_json.read_text("utf-8")):
        nm = (r.get("name") or "").lower()
        if not nm:
            continue
        for code in (r.get("unified"), r.get("non_qualified")):
            if code:
                uni[code.upper()] = nm
        vocab.update(_words(nm))
        for s in r.get("short_names", []):
            vocab.update(_words(s))
    return uni, vocab


def _set_pairs(key: str, spec: dict[str, Any], st: Any, chars_f: Path, uni: dict[str, str], vocab: set[str]
               ) -> list[Pair]:
    """The pairs of one icon set ``st``: one icon per caption, skin-tone variants and interface names out."""
    name_to_code: dict[str, str] = {}
    if chars_f.is_file():
        for cp, nm in json.loads(chars_f.read_text("utf-8")).items():
            name_to_code.setdefault(nm, cp.upper())
    seen: set[str] = set()
    out: list[Pair] = []
    drop = set(spec.get("drop_words", ()))
    for nm in sorted(st.icons):
        if any(nm.endswith(t) and nm[: -len(t)] in st for t in _TONES):
            continue  # skin-tone / default variants of an icon that is in the set anyway
        if nm.startswith(_SKIP_PREFIXES):
            continue
        code = name_to_code.get(nm)
        caption = (uni.get(code, "") if code else "") or clean_caption(nm)
        if " " not in caption and "-" not in nm:
            caption = segment(caption, vocab)
        words = caption.split()
        if not caption or caption in seen or len(words) > spec.get("max_words", 99) or set(words) & drop:
            continue
        seen.add(caption)
        out.append(Pair(f"{key}-{nm}", key, caption, st.svg(nm).encode("utf-8"), tuple(spec.get("views", ["orig"])),
                        f"package/icons.json#{nm}"))
    return out


def collect_pairs(roots: dict[str, Path], sets: dict[str, dict[str, Any]], emoji_json: Path | None) -> list[Pair]:
    """Every usable icon of every set with one caption; one icon per (set, caption)."""
    from vl2v.data.offline.iconify import IconSet

    uni, vocab = unicode_names(emoji_json)
    loaded = {k: IconSet.load(roots[k] / "package" / "icons.json") for k in sets}
    for st in loaded.values():
        for nm in st.icons:
            if "-" in nm:
                vocab.update(_words(_NUM.sub("", nm)))
    vocab = {w for w in vocab if w.isalpha() and len(w) > 1}
    out: list[Pair] = []
    for key, spec in sets.items():
        out += _set_pairs(key, spec, loaded[key], roots[key] / "package" / "chars.json", uni, vocab)
    return out


def split_concepts(pairs: Sequence[Pair], val_fraction: float) -> tuple[list[int], list[int]]:
    """Indices of training and held-out pairs; a concept is held out by a hash of its name (stable)."""
    tr, va = [], []
    for i, p in enumerate(pairs):
        h = int(hashlib.sha256(p.concept.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (va if h < val_fraction else tr).append(i)
    return tr, va


__all__ = ["Pair", "clean_caption", "collect_pairs", "segment", "split_concepts", "unicode_names"]
