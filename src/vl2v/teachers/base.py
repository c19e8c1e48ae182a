"""The teacher interface.

A teacher maps images and texts into one L2-normalised embedding space.
Training code sees a teacher only through this interface (and usually only
through :class:`vl2v.teachers.store.TeacherStore`), so a local model, the
offline ConSE teacher and a remote pay-per-query service are interchangeable.

Images cross the interface as float tensors in [0, 1], shape [B, 3, S, S] with
``S = teacher.image_size``: geometry (resize/crop/augmentation) is done by the
caller with :func:`vl2v.data.transforms.render_view`; each teacher applies its
*own* normalisation inside ``embed_images``. (The VL2V authors' code fed the
teacher ImageNet-normalised student tensors; we feed the teacher its own
preprocessing. See docs/method_notes.md.)
"""

from __future__ import annotations

import abc
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vl2v.errors import ConfigError, WeightsUnavailableError


class TeacherError(ConfigError):
    """A teacher cannot be built or used as configured."""


class TeacherWeightsError(TeacherError, WeightsUnavailableError):
    """A teacher's pretrained weights could not be fetched (offline and not cached)."""


class QueryBudgetExceeded(RuntimeError):
    """A pay-per-query teacher refused more queries: the run stops cleanly, cached embeddings kept."""


class Teacher(abc.ABC):
    """Shared work of every teacher; a backend sets attributes and implements two small hooks.

    A backend's constructor sets :attr:`embed_dim`, :attr:`image_size`, :attr:`device`,
    :attr:`batch_size` and ``_identity``, and implements

    * ``_encode_images(x)``: one chunk ``x`` of at most ``batch_size`` images, already on
      :attr:`device` as float32 -> unnormalised embeddings [n, D];
    * ``_encode_texts(texts)``: one chunk of at most ``text_batch_size`` strings -> unnormalised [n, D].

    :meth:`embed_images` / :meth:`embed_texts` do the rest the same way for every backend:
    chunking, ``torch.no_grad``, float32, L2 normalisation (on the backend's device, then to the
    CPU) and the shape/finiteness check. A backend whose answers are finished embeddings (the
    remote teacher) overrides :meth:`_finish`.
    """

    #: registry name of the backend, e.g. "conse", "openclip"
    backend: str = ""
    #: True when the image encoder is available as a differentiable module (VL2V-SD)
    white_box: bool = False
    #: embedding size D (set by the backend's constructor)
    embed_dim: int
    #: side of the square [0, 1] RGB input ``embed_images`` expects (set by the backend's constructor)
    image_size: int
    device: torch.device = torch.device("cpu")
    #: images per ``_encode_images`` call
    batch_size: int = 64
    #: texts per ``_encode_texts`` call; None: all of them in one call
    text_batch_size: int | None = 256
    _identity: str

    def identity(self) -> str:
        """A string naming the model, its weights (hash or tag) and preprocessing.

        Two teachers with the same identity must give the same embeddings; the
        embedding store keys on it, so any change here invalidates cached entries.
        """
        try:
            return self._identity
        except AttributeError:
            raise NotImplementedError(f"{type(self).__name__} sets no _identity and does not override identity()") from None

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> [B, D] L2-normalised float32 (no gradient)."""
        with torch.no_grad():
            outs = [self._finish(self._encode_images(x)) for x in self._image_batches(images)]
        return self._collect(outs, int(images.shape[0]), "image")

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """N strings -> [N, D] L2-normalised float32 (no gradient)."""
        texts = list(texts)
        with torch.no_grad():
            outs = [self._finish(self._encode_texts(chunk)) for chunk in self._text_batches(texts)]
        return self._collect(outs, len(texts), "text")

    # ------------------------------------------------------------------ hooks
    def _encode_images(self, x: torch.Tensor) -> torch.Tensor:
        """One chunk of images (on :attr:`device`, float32) -> unnormalised embeddings."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _encode_images nor embed_images")

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """One chunk of texts -> unnormalised embeddings."""
        raise NotImplementedError(f"{type(self).__name__} implements neither _encode_texts nor embed_texts")

    def _image_batches(self, images: torch.Tensor) -> Iterator[Any]:
        for chunk in images.split(self.batch_size):
            if len(chunk):
                yield chunk.to(self.device).float()

    def _text_batches(self, texts: list[str]) -> Iterator[Any]:
        step = self.text_batch_size or max(1, len(texts))
        for i in range(0, len(texts), step):
            yield texts[i:i + step]

    def _finish(self, e: torch.Tensor) -> torch.Tensor:
        """One chunk's embeddings -> L2-normalised float32 on the CPU."""
        return F.normalize(e.float(), dim=-1).cpu()

    def _collect(self, outs: list[torch.Tensor], n: int, what: str) -> torch.Tensor:
        out = torch.cat(outs) if outs else torch.empty(0, self.embed_dim)
        return check_embeddings(out, n, self.embed_dim, what)

    # ------------------------------------------------------------------ the rest
    def describe(self) -> str:
        return self.identity()

    def price(self) -> dict[str, Any] | None:
        """What one query costs, for a teacher sold per query: ``{"image": USD per image, "text": USD per text,
        "currency": "USD", "read_on": date, "source": where}``; None for a teacher that costs nothing per query."""
        return None

    # White-box teachers override these (VL2V-SD).
    def image_encoder(self) -> nn.Module:
        """A differentiable module: [B,3,S,S] in [0,1] -> [B, D] (unnormalised)."""
        raise TeacherError(f"teacher {self.backend!r} is black-box: it has no image encoder to copy")

    def to(self, device: torch.device | str) -> "Teacher":
        return self


class PaidTeacher(Teacher):
    """A teacher paid per query over the network (``remote:``, ``vendor:``): one call at a time (``_lock``,
    set by the constructor), and each call checked against the backend's budget before anything is sent.

    A backend implements :meth:`_check_images` / :meth:`_check_texts` (raise :class:`QueryBudgetExceeded` when
    the call would pass its budget) and names itself in errors with :attr:`noun`."""

    #: how errors name the teacher, e.g. "remote teacher"
    noun: str = "pay-per-query teacher"
    _lock: Any  # a threading.Lock

    def _check_images(self, n: int) -> None:
        """Refuse (QueryBudgetExceeded) ``n`` more image queries past the budget."""

    def _check_texts(self, texts: list[str]) -> None:
        """Refuse (QueryBudgetExceeded) these text queries past the budget."""

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """The base class's loop, one request per chunk, after the budget check (nothing is sent past it)."""
        s = self.image_size
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (s, s):
            raise TeacherError(f"{self.noun} expects images of shape [B, 3, {s}, {s}], got {tuple(images.shape)}")
        n = int(images.shape[0])
        if n == 0:
            return torch.zeros((0, self.embed_dim))
        with self._lock:
            self._check_images(n)
            return super().embed_images(images)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        texts = [str(t) for t in texts]
        if not texts:
            return torch.zeros((0, self.embed_dim))
        with self._lock:
            self._check_texts(texts)
            return super().embed_texts(texts)


def check_embeddings(x: torch.Tensor, n: int, dim: int, what: str) -> torch.Tensor:
    if x.ndim != 2 or x.shape[0] != n or x.shape[1] != dim:
        raise TeacherError(f"teacher returned {what} embeddings of shape {tuple(x.shape)}, expected ({n}, {dim})")
    if not torch.isfinite(x).all():
        raise TeacherError(f"teacher returned non-finite {what} embeddings")
    return x
