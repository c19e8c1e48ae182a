"""Top-k predictions from a trained student: a run directory, its checkpoint, or an exported model.

``load_predictor(path)`` accepts
* a run directory (``OUT/<algo>/target-<i>-<domain>/seed<s>``): the PyTorch model
  of its selected checkpoint (``which="swad"`` for the SWAD average);
* a run's checkpoint file (``model.safetensors`` / ``swad.safetensors``);
* an exported ``.onnx`` file (run with onnxruntime) or TorchScript ``.pt`` file,
  with the JSON sidecar ``vl2v export`` wrote next to it (class names, input size).

Every kind sees the same preprocessing: decode to RGB, resize to S x S
(bilinear, antialiased), scale to [0, 1] (:func:`vl2v.data.transforms.eval_view`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from vl2v.runs.layout import RunDir
from vl2v.serving.export import INPUT_NAME, OUTPUT_NAME, ExportError, load_student_run, onnx_session, sidecar_path


def load_image(path: str | Path, size: int) -> torch.Tensor:
    """Decode ``path`` and return the evaluation view: float [3, size, size] in [0, 1]."""
    from vl2v.data.images import load_rgb
    from vl2v.data.transforms import eval_view

    img = load_rgb(path)
    arr = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    return eval_view(arr, size)


def expand_images(items: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders expanded to the image files under them (sorted)."""
    from vl2v.data.images import is_image_file

    out: list[Path] = []
    for it in items:
        p = Path(it)
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and is_image_file(q.name)))
        else:
            out.append(p)
    return out


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), best first
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.error:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": c, "prob": round(p, 6)} for c, p in self.top]}


class Predictor:
    """Logits for float images [B,3,S,S] in [0,1], and top-k class probabilities for files."""

    def __init__(self, logits_fn: Callable[[np.ndarray], np.ndarray], classes: Sequence[str], image_size: int,
                 kind: str, source: str, meta: dict[str, Any] | None = None) -> None:
        self._logits = logits_fn
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.kind = kind
        self.source = source
        self.meta = meta or {}

    def logits(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        return self._logits(np.ascontiguousarray(x, dtype=np.float32))

    def probabilities(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        z = self.logits(x).astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict_files(self, paths: Sequence[str | Path], topk: int = 5, batch_size: int = 32) -> list[Prediction]:
        from vl2v.data.images import ImageDecodeError

        k = max(1, min(int(topk), len(self.classes)))
        out: list[Prediction | None] = [None] * len(paths)
        good: list[tuple[int, torch.Tensor]] = []
        for i, p in enumerate(paths):
            if not Path(p).is_file():
                out[i] = Prediction(str(p), [], "no such file")
                continue
            try:
                good.append((i, load_image(p, self.image_size)))
            except ImageDecodeError as exc:
                out[i] = Prediction(str(p), [], str(getattr(exc, "reason", exc)))
        for s in range(0, len(good), batch_size):
            chunk = good[s:s + batch_size]
            probs = self.probabilities(torch.stack([t for _, t in chunk]))
            for (i, _), pr in zip(chunk, probs):
                order = np.argsort(-pr, kind="stable")[:k]
                out[i] = Prediction(str(paths[i]), [(self.classes[j], float(pr[j])) for j in order])
        return [o for o in out if o is not None]


def load_predictor(path: str | Path, which: str = "selected", threads: int | None = None) -> Predictor:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        return _pytorch_predictor(path, which)
    if path.suffix == ".safetensors":
        if not RunDir(path.parent).has_config():
            raise ExportError(f"{path} is not inside a vl2v run directory (no config.json beside it); "
                              "pass the run directory, or an exported .onnx/.pt file")
        return _pytorch_predictor(path.parent, RunDir.which_weights(path))
    if path.suffix in (".onnx", ".pt"):
        meta = _read_sidecar(path)
        classes, size = meta["classes"], int(meta["input"]["shape"][-1])
        if path.suffix == ".onnx":
            sess = onnx_session(path, threads)
            fn = lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]  # noqa: E731
            return Predictor(fn, classes, size, "onnx", str(path), meta)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                module = torch.jit.load(str(path), map_location="cpu").eval()
            except RuntimeError as exc:
                raise ExportError(f"{path} is not a TorchScript model written by `vl2v export` ({str(exc)[:200]})") from exc
        return Predictor(_torch_fn(module), classes, size, "torchscript", str(path), meta)
    raise ExportError(f"cannot predict with {path}: expected a run directory, a run's .safetensors checkpoint, "
                      "an exported .onnx file or a TorchScript .pt file")


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.exists():
        raise FileNotFoundError(f"{side} is missing: it holds the class names and input size of {path.name} "
                                "and is written by `vl2v export` next to the model")
    meta = json.loads(side.read_text())
    if "classes" not in meta or "input" not in meta:
        raise ExportError(f"{side} is not a vl2v export sidecar (no classes/input)")
    return meta


def _torch_fn(module: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).float().numpy()

    return fn


def _pytorch_predictor(run_dir: Path, which: str) -> Predictor:
    from vl2v.serving.export import deploy_model

    loaded = load_student_run(run_dir, which)
    model, head = deploy_model(loaded)
    meta = {"algorithm": loaded.config.get("spec", {}).get("algorithm"), "teacher_identity": loaded.teacher_identity,
            "head": head, "checkpoint": which}
    return Predictor(_torch_fn(model), loaded.classes, loaded.image_size, "pytorch", str(run_dir), meta)


def format_predictions(preds: Sequence[Prediction]) -> str:
    lines: list[str] = []
    width = max((len(c) for p in preds for c, _ in p.top), default=8)
    for p in preds:
        lines.append(p.path)
        if p.error:
            lines.append(f"  error: {p.error}")
            continue
        for r, (c, prob) in enumerate(p.top, 1):
            lines.append(f"  {r}. {c:<{width}}  {prob:.4f}")
    return "\n".join(lines)

