"""A black-box view of any teacher: only the two embed functions and the identity.

Wrapping a local teacher in :class:`BlackBoxTeacher` proves the training code
needs nothing else, so the same run works against a remote pay-per-query API.
It also counts the queries it forwards.
"""

from __future__ import annotations

from typing import Sequence

import torch

from vl2v.teachers.base import Teacher


class BlackBoxTeacher(Teacher):
    backend = "blackbox"
    white_box = False

    def __init__(self, inner: Teacher) -> None:
        self._inner = inner
        self.embed_dim = inner.embed_dim
        self.image_size = inner.image_size
        self.image_queries = 0
        self.text_queries = 0

    def identity(self) -> str:
        return self._inner.identity()

    def price(self):  # the bill is public: black-box hides the model, not what a query costs
        return self._inner.price()

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        self.image_queries += int(images.shape[0])
        return self._inner.embed_images(images)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        self.text_queries += len(texts)
        return self._inner.embed_texts(texts)
