"""``--device``: ``auto`` (CUDA when present, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``, checked before any work."""

from __future__ import annotations

import re

from vl2v.errors import ConfigError

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def check_device(device: str | None) -> str:
    """``device`` if it names a device this machine has, else a :class:`ConfigError` saying what to pass."""
    if device in (None, ""):
        return "auto"
    if not _DEVICE.match(device):
        raise ConfigError(f"--device {device!r} is not a device: use auto (CUDA when present, else the CPU), cpu, "
                          "cuda or cuda:N")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            built = f"torch {torch.__version__}" + (f" built for CUDA {torch.version.cuda}" if torch.version.cuda
                                                    else ", a CPU-only build")
            raise ConfigError(f"--device {device}: no CUDA device is visible to {built}; use --device cpu "
                              "(or auto, which picks CUDA when there is one)")
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_device(device: str | None) -> str:
    """``"auto"`` (or empty) -> ``"cuda"`` if a CUDA device is visible, else ``"cpu"``; anything else checked
    (:func:`check_device`) and returned unchanged."""
    if device in (None, "", "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)
