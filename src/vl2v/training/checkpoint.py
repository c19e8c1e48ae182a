"""Checkpoints: model weights as safetensors, full training state via torch.save/load(weights_only=True).

All writes are atomic (temporary file + rename), so a crash mid-write leaves
the previous checkpoint intact. Loading never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vl2v.errors import ConfigError
from vl2v.utils.io import atomic_path


def save_weights(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items() if isinstance(v, torch.Tensor)}
    metadata = {k: json.dumps(v) for k, v in (meta or {}).items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
    return load_file(str(path)), meta


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class UnsafeCheckpointError(ConfigError):
    """A checkpoint holds more than tensors and plain containers (it could run code when unpickled)."""


def load_state(path: str | Path) -> dict[str, Any]:
    """Load a training-state file; refuse anything that is not plain tensors/containers."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError and friends
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it is not a plain tensor/state file ({first}). vl2v never unpickles "
            "arbitrary objects; a checkpoint from an untrusted source may carry code.") from exc
