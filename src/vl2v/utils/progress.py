"""Progress bars (tqdm) that stay quiet when asked to (``VL2V_PROGRESS=0``).

Every progress bar of vl2v (training, data download/build/check, embedding) is
made here, so one environment variable controls them all.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def enabled() -> bool:
    """On for terminals; ``VL2V_PROGRESS=1`` forces bars on, ``=0`` off."""
    env = os.environ.get("VL2V_PROGRESS")
    if env is not None:
        return env not in ("0", "false", "no", "")
    return sys.stderr.isatty()


def progress(it: Iterable[T], desc: str = "", total: int | None = None, unit: str = "it", leave: bool = False,
             disable: bool = False, **kw: Any) -> Iterable[T]:
    return tqdm(it, desc=desc, total=total, unit=unit, leave=leave, disable=disable or not enabled(),
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **kw)


def bar(total: int | None, desc: str = "", unit: str = "it", leave: bool = False, disable: bool = False,
        **kw: Any) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=disable or not enabled(),
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **kw)
