"""A BERT WordPiece tokenizer in pure Python (standard library only), for an exported text tower.

``vl2v export`` copies this file into an export bundle beside ``vocab.txt`` (the model's WordPiece
vocabulary) and ``wordpiece.json`` (its settings and character table), so that ``text.onnx`` can be fed
without vl2v, transformers or tokenizers::

    from wordpiece import WordPiece
    ids, mask = WordPiece.load("export").encode(["a photo of a kite", "a photo of a harp"])

``encode`` gives what the model's own tokenizer (Hugging Face ``tokenizers``, as sentence-transformers
calls it: truncation to ``max_length``, padding to the longest text) gives, id for id:

1. the special tokens (``[CLS]``, ``[SEP]``, ``[MASK]``, ...) written in a text are matched first, as is;
2. the rest is normalised one character at a time with the table in ``wordpiece.json``: BERT's basic
   normalisation as the model's tokenizer config sets it (control and format characters dropped,
   whitespace to a space, spaces around CJK ideographs, lower-casing and accent stripping: NFD without
   non-spacing marks). The table is the model tokenizer's own normaliser applied to every code point
   when the bundle was written, so the result depends neither on this Python's Unicode version nor on
   the ``unicodedata`` module (the only difference left: combining marks that survive accent stripping
   are not put in canonical order, as NFD would for a run of several of them);
3. words are split at whitespace, each punctuation character a word of its own;
4. WordPiece: longest vocabulary match first, ``##`` before a word's later pieces; a word that cannot be
   matched, or longer than ``max_input_chars_per_word`` characters, is ``[UNK]``;
5. ``[CLS]`` + pieces (at most ``max_length - 2``) + ``[SEP]``, padded with ``[PAD]`` (mask 0).
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path
from typing import Iterator, Sequence

VOCAB, SPEC = "vocab.txt", "wordpiece.json"
FORMAT = 1
_KINDS = ("drop", "space", "pad")  # normalised to "", " ", " c " (in the order of the table's ranges)


class WordPiece:
    """Text -> token ids of a BERT WordPiece vocabulary; see the module docstring for the steps."""

    def __init__(self, vocab: Sequence[str], spec: dict) -> None:
        if spec.get("format") != FORMAT:
            raise ValueError(f"{SPEC} of format {spec.get('format')!r}; this tokenizer reads format {FORMAT}")
        self.vocab = {tok: i for i, tok in enumerate(vocab)}
        self.max_length = int(spec["max_length"])
        self.max_chars = int(spec["max_input_chars_per_word"])
        self.prefix = spec["continuing_subword_prefix"]
        self.unk, self.cls, self.sep, self.pad = (self.vocab[spec[k]] for k in ("unk_token", "cls_token",
                                                                               "sep_token", "pad_token"))
        self.specials = sorted(spec["special_tokens"], key=len, reverse=True)  # longest match first
        self._special_starts = {s[0] for s in self.specials}
        chars = spec["chars"]
        self.map = {int(k): v for k, v in chars["map"].items()}
        spans = sorted((a, b, kind) for kind in _KINDS for a, b in chars[kind])
        self._starts = [a for a, _, _ in spans]
        self._spans = spans
        self._punct = sorted(chars["punct"])
        self._space = sorted(chars["whitespace"])
        self._cache: dict[str, str] = {}

    @classmethod
    def load(cls, folder: str | Path = ".") -> "WordPiece":
        """The tokenizer of a bundle folder: its ``vocab.txt`` (one token a line, id = line number) and
        ``wordpiece.json``."""
        folder = Path(folder)
        vocab = (folder / VOCAB).read_text(encoding="utf-8").split("\n")
        if vocab and vocab[-1] == "":
            vocab.pop()
        return cls(vocab, json.loads((folder / SPEC).read_text(encoding="utf-8")))

    # ------------------------------------------------------------------ the steps
    def normalize_char(self, ch: str) -> str:
        out = self._cache.get(ch)
        if out is None:
            cp = ord(ch)
            out = self.map.get(cp)
            if out is None:
                i = bisect.bisect_right(self._starts, cp) - 1
                kind = self._spans[i][2] if i >= 0 and cp <= self._spans[i][1] else None
                out = {"drop": "", "space": " ", "pad": f" {ch} ", None: ch}[kind]
            self._cache[ch] = out
        return out

    def normalize(self, text: str) -> str:
        return "".join(self.normalize_char(ch) for ch in text)

    def words(self, normalized: str) -> Iterator[str]:
        """Split at whitespace; every punctuation character is a word of its own."""
        word: list[str] = []
        for ch in normalized:
            space, punct = _member(self._space, ord(ch)), _member(self._punct, ord(ch))
            if (space or punct) and word:
                yield "".join(word)
                word = []
            if punct:
                yield ch
            elif not space:
                word.append(ch)
        if word:
            yield "".join(word)

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        out, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = (self.prefix if start else "") + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            out.append(found)
            start = end
        return out

    def pieces(self, text: str) -> list[int]:
        """The ids of ``text`` without [CLS]/[SEP], before truncation."""
        out: list[int] = []
        for segment, special in self._split_specials(text):
            if special:
                out.append(self.vocab[segment])
                continue
            for word in self.words(self.normalize(segment)):
                out.extend(self.wordpiece(word))
        return out

    def ids(self, text: str) -> list[int]:
        """``[CLS]`` + the pieces of ``text`` (at most ``max_length - 2``) + ``[SEP]``."""
        return [self.cls] + self.pieces(text)[:self.max_length - 2] + [self.sep]

    def encode(self, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and attention mask of each text, padded to the longest (``np.array(...)`` of either is
        the int64 ``[N, L]`` input of ``text.onnx``)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        rows = [self.ids(t) for t in texts]
        width = max((len(r) for r in rows), default=2)
        ids = [r + [self.pad] * (width - len(r)) for r in rows]
        mask = [[1] * len(r) + [0] * (width - len(r)) for r in rows]
        return ids, mask

    def _split_specials(self, text: str) -> Iterator[tuple[str, bool]]:
        """``text`` cut around the special tokens written in it (leftmost, then longest match)."""
        start = i = 0
        while i < len(text):
            hit = None
            if text[i] in self._special_starts:
                hit = next((s for s in self.specials if text.startswith(s, i)), None)
            if hit is None:
                i += 1
                continue
            if i > start:
                yield text[start:i], False
            yield hit, True
            i = start = i + len(hit)
        if start < len(text):
            yield text[start:], False


def _member(ranges: list[list[int]], cp: int) -> bool:
    """Is ``cp`` in one of the sorted, disjoint ``[first, last]`` ranges?"""
    i = bisect.bisect_right(ranges, [cp, 0x110000]) - 1
    return i >= 0 and ranges[i][0] <= cp <= ranges[i][1]
