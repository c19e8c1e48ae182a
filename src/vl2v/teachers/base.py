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
from typing import Sequence

import torch
from torch import nn

from vl2v.errors import ConfigError


class TeacherError(ConfigError):
    """A teacher cannot be built or used as configured."""


class QueryBudgetExceeded(RuntimeError):
    """A pay-per-query teacher refused more queries: the run stops cleanly, cached embeddings kept."""


class Teacher(abc.ABC):
    #: registry name of the backend, e.g. "conse", "openclip"
    backend: str = ""
    #: True when the image encoder is available as a differentiable module (VL2V-SD)
    white_box: bool = False

    @property
    @abc.abstractmethod
    def embed_dim(self) -> int: ...

    @property
    @abc.abstractmethod
    def image_size(self) -> int:
        """Side of the square [0, 1] RGB input ``embed_images`` expects."""

    @abc.abstractmethod
    def identity(self) -> str:
        """A string naming the model, its weights (hash or tag) and preprocessing.

        Two teachers with the same identity must give the same embeddings; the
        embedding store keys on it, so any change here invalidates cached entries.
        """

    @abc.abstractmethod
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] in [0, 1] -> [B, D] L2-normalised float32 (no gradient)."""

    @abc.abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """N strings -> [N, D] L2-normalised float32 (no gradient)."""

    def describe(self) -> str:
        return self.identity()

    # White-box teachers override these (VL2V-SD).
    def image_encoder(self) -> nn.Module:
        """A differentiable module: [B,3,S,S] in [0,1] -> [B, D] (unnormalised)."""
        raise TeacherError(f"teacher {self.backend!r} is black-box: it has no image encoder to copy")

    def to(self, device: torch.device | str) -> "Teacher":
        return self


def check_embeddings(x: torch.Tensor, n: int, dim: int, what: str) -> torch.Tensor:
    if x.ndim != 2 or x.shape[0] != n or x.shape[1] != dim:
        raise TeacherError(f"teacher returned {what} embeddings of shape {tuple(x.shape)}, expected ({n}, {dim})")
    if not torch.isfinite(x).all():
        raise TeacherError(f"teacher returned non-finite {what} embeddings")
    return x
