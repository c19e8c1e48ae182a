"""Parallel, deterministic view rendering: the main process plans, :mod:`torch.utils.data` workers render.

Every random choice (which images, which augmentation, which stored view) is
drawn in the main process, in order, before a request reaches the workers; a
worker only decodes (streamed datasets) and renders the views it is told to. So
the batches are the same whatever the number of workers (0 renders in the main
process), and a run is reproducible from its seed.

A :class:`RenderRequest` is one unit of work (a training step, an evaluation
chunk): groups of ``(kind, size, [(image index, AugParams | None), ...])``. The
answer is one uint8 tensor [N, 3, size, size] per group (``None`` for an empty
group), in request order; ``x.float().div_(255)`` gives exactly the floats
:func:`~vl2v.data.transforms.render_view` / ``teacher_view`` would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch

from vl2v.data.dataset import ImageBank
from vl2v.data.transforms import AugParams, render_view_u8, teacher_view_u8

Item = tuple[int, "AugParams | None"]


@dataclass(frozen=True)
class RenderRequest:
    #: (kind, size, items): kind "student" (student view) or "teacher" (the teacher's view)
    groups: tuple[tuple[str, int, tuple[Item, ...]], ...]


class ViewRenderer(torch.utils.data.Dataset):
    """Loader-worker side: render the views a request names (decoding streamed images from disk)."""

    def __init__(self, bank: ImageBank) -> None:
        self.bank = bank

    def __getitem__(self, req: RenderRequest) -> list[torch.Tensor | None]:
        out: list[torch.Tensor | None] = []
        for kind, size, items in req.groups:
            if not items:
                out.append(None)
                continue
            fn = render_view_u8 if kind == "student" else teacher_view_u8
            out.append(torch.stack([fn(self.bank.image(i), p, size) for i, p in items]))
        return out

    def __len__(self) -> int:  # requests are not indexed by position
        raise TypeError("ViewRenderer is driven by a sampler of RenderRequests")


def _identity(x):
    return x


def render_stream(bank: ImageBank, requests: Iterable[RenderRequest], workers: int = 0,
                  pin_memory: bool = False, prefetch: int = 2) -> Iterator[list[torch.Tensor | None]]:
    """The rendered answers to ``requests``, in order; ``workers`` loader processes render ahead.

    ``requests`` is consumed lazily (with workers, up to ``workers * prefetch`` requests ahead
    of the caller): a planner that draws random numbers while yielding must snapshot its state
    per request if it needs the state at a given step (see the trainer).
    """
    renderer = ViewRenderer(bank)
    if workers <= 0:
        for req in requests:
            yield renderer[req]
        return
    loader = torch.utils.data.DataLoader(renderer, sampler=requests, batch_size=None, num_workers=workers,
                                         collate_fn=_identity, pin_memory=pin_memory, prefetch_factor=prefetch)
    yield from loader


def default_workers(device: str) -> int:
    """Loader workers when not set: none on a CPU (rendering competes with the step for the same cores),
    up to 8 beside a GPU."""
    import os

    if not str(device).startswith("cuda"):
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))
