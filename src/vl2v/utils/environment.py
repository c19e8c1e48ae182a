"""What a run's numbers may depend on besides its settings: the versions of the numeric libraries and the CPU's
instruction set (kernels differ in their last bits between them, and a fine-tuned student amplifies that)."""

from __future__ import annotations

import platform
import sys
from importlib import metadata
from typing import Any

#: the distributions whose versions a run records
PACKAGES = ("torch", "torchvision", "timm", "numpy", "pillow", "onnxruntime", "safetensors", "open_clip_torch",
            "sentence-transformers", "transformers")


def environment() -> dict[str, Any]:
    """Python, the platform, the CPU instruction set torch uses, and the versions of :data:`PACKAGES`
    (None where one is not installed)."""
    import torch

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    from vl2v import __version__

    return {"vl2v": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "packages": versions}
