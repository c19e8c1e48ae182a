"""Data-parallel training on torch.distributed (launched by ``torchrun``).

``torchrun --nproc_per_node N -m vl2v train ...`` starts N processes; each
reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment and joins one
process group (NCCL on GPUs, gloo on CPUs). vl2v then:

* draws every step's *global* per-domain minibatch identically on all ranks
  (same sampler and augmentation RNG as a single process) and gives each rank
  its slice, so N processes with a global batch B see exactly the samples one
  process with batch B sees;
* wraps the algorithm in ``DistributedDataParallel`` (gradients averaged
  across ranks) for each training stage;
* shards evaluations and sums correct counts and losses across ranks, so every
  rank takes the same checkpoint and SWAD decisions;
* lets rank 0 alone write records, checkpoints and the teacher store (the other
  ranks wait, then read the store).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO = DistInfo()


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for a single process)."""
    global _INFO
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _INFO = DistInfo()
        return _INFO
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    _INFO = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device.startswith("cuda"):
        torch.cuda.set_device(_INFO.local_rank)
    return _INFO


def info() -> DistInfo:
    return _INFO


def barrier() -> None:
    if _INFO.enabled:
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first (e.g. teacher queries written to the store), then on the others."""
    if _INFO.enabled and not _INFO.is_main:
        dist.barrier()
    yield
    if _INFO.enabled and _INFO.is_main:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _INFO.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shard(items: list, rank: int | None = None, world: int | None = None) -> list:
    """The contiguous slice of a global minibatch that belongs to ``rank``."""
    rank = _INFO.rank if rank is None else rank
    world = _INFO.world_size if world is None else world
    n = len(items) // world
    return items[rank * n:(rank + 1) * n]


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` when running data-parallel, else the module itself."""
    if not _INFO.enabled or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else _INFO.local_rank] if device.type == "cuda" else None
    return DDP(module, device_ids=ids, broadcast_buffers=False)
