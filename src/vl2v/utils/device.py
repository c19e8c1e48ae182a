"""``--device auto``: CUDA when present, else the CPU."""

from __future__ import annotations


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or empty) -> ``"cuda"`` if a CUDA device is visible, else ``"cpu"``; anything else unchanged."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
