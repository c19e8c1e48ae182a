"""Optional parts of vl2v live behind pip extras; a missing one is a one-line error naming the extra.

``require("serve", "fastapi", "uvicorn")`` imports nothing itself: it checks the
modules can be found and, if one cannot, raises :class:`MissingExtraError`
telling the user which extra to install (``pip install 'vl2v[serve]'``).
"""

from __future__ import annotations

import importlib.util

from vl2v.errors import ConfigError

#: extra name -> what it enables (shown in the error message and in the README)
EXTRAS: dict[str, str] = {
    "serve": "the embedding service `vl2v serve` and the remote teacher",
    "export": "`vl2v export` and `vl2v predict` of ONNX models",
    "hf": "Hugging Face transformers teachers (transformers:HUB_ID)",
    "slurm": "`vl2v sweep --launcher slurm|submitit-local`",
    "build": "`vl2v data build` / `vl2v data download` (SVG rendering, Google Drive downloads)",
}


class MissingExtraError(ConfigError):
    """An optional dependency is not installed."""


def missing_modules(*modules: str) -> list[str]:
    """Those of ``modules`` that cannot be imported (nothing is imported to find out)."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtraError` unless every module in ``modules`` can be imported."""
    missing = missing_modules(*modules)
    if missing:
        what = EXTRAS.get(extra, extra)
        raise MissingExtraError(f"{', '.join(missing)} not installed: {what} needs the '{extra}' extra; "
                                f"install it with: pip install 'vl2v[{extra}]' (or 'vl2v[all]')")
