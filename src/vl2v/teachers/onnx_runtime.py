"""An ONNX Runtime copy of a teacher's classifier, exported once and cached in the vl2v cache.

Used by the ConSE teacher's ``runtime=onnx`` option: the image tower's
normalisation + EfficientNet classifier (images [B,3,S,S] in [0,1] -> logits
[B,1000]) is exported with the torch.export-based ONNX exporter (dynamic batch
axis) and run with onnxruntime's CPU provider, which on CPUs runs these
depthwise-convolution networks several times faster than eager PyTorch (see
``benchmarks/teacher_speed.py``). The top-k weighting stays in PyTorch.

The file lives at ``vl2v_home()/onnx/NAME-KEY.onnx``, where KEY hashes the
exported module's weights (the tensors themselves), the input size, the
exporter, the opset and the torch version; a sidecar ``.onnx.json`` records the
file's SHA-256. Both are written atomically. A cached file is used only if its
digest matches the sidecar, onnxruntime loads it and it agrees with PyTorch on a
small check batch; otherwise it is exported again.
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vl2v.teachers.base import TeacherError
from vl2v.utils.extras import require
from vl2v.utils.hashing import file_digest
from vl2v.utils.io import atomic_path, atomic_write_json, vl2v_home

EXPORTER = "torch.onnx-dynamo"
OPSET = 18
#: bump when what is exported changes (inputs, outputs, wrapper), to orphan older cache files
FORMAT = 1
INPUT_NAME, OUTPUT_NAME = "images", "logits"
#: the exported logits must match PyTorch's to this (absolute, on logits of magnitude ~10) on the check batch;
#: measured differences are ~2e-5
PARITY_ATOL = 1e-3


class OnnxExportError(TeacherError):
    """The ONNX copy of a teacher cannot be built or does not agree with PyTorch."""


def module_digest(module: nn.Module) -> str:
    """SHA-256 over a module's state (names, dtypes, shapes and values of every tensor), in order."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(module: nn.Module, image_size: int) -> dict[str, Any]:
    return {"weights_sha256": module_digest(module), "input": [3, int(image_size), int(image_size)],
            "exporter": EXPORTER, "opset": OPSET, "torch": torch.__version__.split("+")[0], "format": FORMAT}


def cache_path(name: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return vl2v_home() / "onnx" / f"{name}-{digest}.onnx"


def export_onnx(module: nn.Module, image_size: int, path: Path) -> None:
    """Write ``module`` (images [B,3,S,S] -> [B,N]) as ONNX at ``path`` (atomically), dynamic batch axis."""
    require("export", "onnx", "onnxscript")
    model = copy.deepcopy(module).eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                 dynamic_shapes={"x": {0: batch}}, opset_version=OPSET, external_data=False,
                                 verbose=False)
        prog.save(str(tmp), external_data=False)


def make_session(path: Path, threads: int | None = None, level: str = "all"):
    """An onnxruntime CPU session: ``threads`` intra-op threads (default: torch's), graph optimisation ``level``."""
    require("export", "onnxruntime")
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = levels[level]
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxModule:
    """``module`` run by onnxruntime: ``__call__(x: torch.Tensor [B,3,S,S]) -> torch.Tensor`` on the CPU."""

    def __init__(self, module: nn.Module, image_size: int, name: str, threads: int | None = None) -> None:
        require("export", "onnxruntime")
        self.image_size = int(image_size)
        key = cache_key(module, image_size)
        self.path = cache_path(name, key)
        self.exported = False  # True when this build wrote the file (no usable cached copy)
        check = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = module(check.contiguous(memory_format=torch.channels_last)).float().numpy()
        session = self._load_cached(key, check, ref, threads)
        if session is None:
            export_onnx(module, image_size, self.path)
            atomic_write_json(self.path.with_name(self.path.name + ".json"),
                              {"sha256": file_digest(self.path), "key": key})
            self.exported = True
            session = make_session(self.path, threads)
            diff = self._parity(session, check, ref)
            if not diff <= PARITY_ATOL:
                raise OnnxExportError(f"the ONNX export of {name} disagrees with PyTorch (max abs logit difference "
                                      f"{diff:.3g} > {PARITY_ATOL}); use runtime=torch")
        self.session = session

    def _load_cached(self, key: dict[str, Any], check: torch.Tensor, ref: np.ndarray, threads: int | None):
        side = self.path.with_name(self.path.name + ".json")
        try:
            meta = json.loads(side.read_text())
            if meta.get("key") != key or meta.get("sha256") != file_digest(self.path):
                return None
            session = make_session(self.path, threads)
            return session if self._parity(session, check, ref) <= PARITY_ATOL else None
        except Exception:  # missing, truncated, corrupted or foreign file: export it again
            return None

    @staticmethod
    def _parity(session, check: torch.Tensor, ref: np.ndarray) -> float:
        got = session.run([OUTPUT_NAME], {INPUT_NAME: check.numpy()})[0]
        if got.shape != ref.shape or not np.isfinite(got).all():
            return float("inf")
        return float(np.abs(got - ref).max())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: arr})[0])
