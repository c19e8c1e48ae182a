"""The embedding service: any teacher behind an HTTP API with keys, metering and idempotent retries.

``vl2v serve`` runs it; :class:`vl2v.teachers.remote.RemoteTeacher` is its client.
FastAPI (and torch) are imported only by :mod:`vl2v.serving.service`.
"""

import os
import sys
from pathlib import Path

from vl2v.serving.keys import KeyRing, KeysFileError, add_key  # noqa: F401
from vl2v.teachers.wire import API_VERSION  # noqa: F401

TORCH_CACHE = "torch-cache"
KEYS_FILE = "keys.txt"


def confine_writes(data_dir: str | os.PathLike[str]) -> None:
    """Keep this process's incidental writes inside ``data_dir``; call before importing torch.

    Python would write bytecode caches next to the sources, and importing
    torchvision creates TorchInductor's cache folder under the temp directory;
    the service promises to write only under its data directory.
    """
    sys.dont_write_bytecode = True
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(data_dir).resolve() / TORCH_CACHE)
