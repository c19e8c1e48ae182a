"""Export a trained student as one deployable model: ONNX (onnxruntime) or TorchScript.

The exported graph is the student with its head baked in, taking float RGB
images ``[B, 3, S, S]`` in [0, 1] (the student's own mean/std normalisation is
inside the graph) and returning class logits ``[B, C]``:

* ADiP (and any algorithm predicting with a projection and the teacher's text
  classifier): ``100 * cos(P(g(x)), T_c)``; the normalised text embeddings are
  constants of the graph, so no teacher is needed at inference.
* ERM / LP-FT / KD: the linear classifier on the student's features.

Beside the model file ``NAME.EXT`` a sidecar ``NAME.EXT.json`` records what a
caller needs: class names, input size and eval preprocessing (resize to
S x S, RGB in [0, 1]), the teacher identity, the algorithm and the source run,
and the parity of the exported model with the PyTorch one on a check batch.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vl2v import __version__
from vl2v.errors import ConfigError
from vl2v.runs.layout import RunDir, spec_options
from vl2v.utils.hashing import file_digest

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
WHICH = ("selected", "swad")
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportError(ConfigError):
    """A model cannot be exported (or loaded for prediction) as asked; the message says why."""


# --------------------------------------------------------------------------- heads
class CosineHead(nn.Module):
    """``scale * cos(P(f), T_c)`` with the class text embeddings ``T_c`` stored normalised."""

    def __init__(self, projection: nn.Linear, text: torch.Tensor, scale: float = 100.0) -> None:
        super().__init__()
        self.projection = projection
        self.scale = float(scale)
        self.register_buffer("classifier", F.normalize(text.detach().float(), dim=-1).clone())

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        z = self.projection(feats)
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.scale * (z @ self.classifier.t())


class LinearHead(nn.Module):
    def __init__(self, classifier: nn.Linear) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats)


class _AlgorithmHead(nn.Module):
    """Fallback for algorithms whose head is neither of the above: their own ``logits``."""

    def __init__(self, algorithm: nn.Module) -> None:
        super().__init__()
        self.algorithm = algorithm

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.algorithm.logits(feats)


class DeployModel(nn.Module):
    """Student + head: images [B,3,S,S] float in [0,1] -> logits [B,C]."""

    def __init__(self, student: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.student(images))


def build_head(algorithm: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The algorithm's prediction head as a small module, and a description for the sidecar.

    The explicit heads are checked against ``algorithm.logits`` on random
    features; if they disagree the algorithm's own ``logits`` is used as is.
    """
    proj, text, cls = getattr(algorithm, "projection", None), getattr(algorithm, "text", None), getattr(algorithm, "classifier", None)
    head: nn.Module
    if isinstance(proj, nn.Linear) and isinstance(text, torch.Tensor):
        head = CosineHead(proj, text, 100.0)
        desc = {"kind": "cosine-to-text", "scale": 100.0, "projection": [proj.in_features, proj.out_features],
                "classes_embedding_dim": int(text.shape[1]),
                "rule": "logits_c = 100 * cos(P(g(x)), T_c), T_c = teacher text embedding of class c"}
    elif isinstance(cls, nn.Linear):
        head = LinearHead(cls)
        desc = {"kind": "linear", "shape": [cls.in_features, cls.out_features], "rule": "logits = W g(x) + b"}
    else:
        head = _AlgorithmHead(algorithm)
        desc = {"kind": "algorithm-logits", "rule": f"{type(algorithm).__name__}.logits(g(x))"}
    feat_dim = getattr(algorithm.student, "feature_dim", None)
    if feat_dim and not isinstance(head, _AlgorithmHead):
        f = torch.randn(4, int(feat_dim), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref, got = algorithm.logits(f), head(f)
        if ref.shape != got.shape or not torch.allclose(ref, got, atol=1e-4, rtol=1e-5):
            head = _AlgorithmHead(algorithm)
            desc = {"kind": "algorithm-logits", "rule": f"{type(algorithm).__name__}.logits(g(x))"}
    return head, desc


# --------------------------------------------------------------------------- run loading
def load_student_run(run_dir: str | Path, which: str = "selected"):
    """Load a run's trained model with clear errors (no directory, zero-shot, no SWAD, unfinished)."""
    from vl2v.methods import get_algorithm
    from vl2v.runs.model import load_run_model

    if which not in WHICH:
        raise ExportError(f"unknown checkpoint {which!r}; choose from {', '.join(WHICH)}")
    run = Path(run_dir)
    rd = RunDir(run)
    if not run.exists():
        raise FileNotFoundError(f"{run} does not exist")
    if not run.is_dir() or not rd.has_config():
        raise FileNotFoundError(f"{run} is not a vl2v run directory (no config.json); "
                                "pass OUT/<algorithm>/target-<i>-<domain>/seed<s>")
    cfg = rd.config()
    name = cfg.get("spec", {}).get("algorithm") or cfg.get("args", {}).get("algorithm", "?")
    if not get_algorithm(name).cls.has_student:
        raise ExportError(f"run {run} is '{name}' (the teacher's zero-shot classifier): it has no student "
                          "model to export or run; use a run of adip, erm_lp, erm_ft, lp_ft or kd")
    wfile = rd.weights(which)
    if not wfile.exists():
        hint = (" (the run was trained without --swad, or SWAD found no loss valley)" if which == "swad"
                else " (is the run finished? its `done` file is " + ("present)" if rd.is_done() else "missing)"))
        raise FileNotFoundError(f"{wfile} does not exist{hint}")
    return load_run_model(run, which=which)


def deploy_model(loaded) -> tuple[DeployModel, dict[str, Any]]:
    algo = loaded.algorithm.eval()
    head, desc = build_head(algo)
    model = DeployModel(algo.student, head).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, desc


# --------------------------------------------------------------------------- export
@dataclass
class ExportResult:
    model_path: Path
    sidecar_path: Path
    meta: dict[str, Any]

    @property
    def max_abs_diff(self) -> float:
        return float(self.meta["parity"]["max_abs_logit_diff"])


def sidecar_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name + ".json")


def check_images(run_dir: Path, size: int, n: int = 8) -> tuple[torch.Tensor, str]:
    """A parity batch: up to ``n`` of the run's target images (from predictions.json), else seeded noise."""
    from vl2v.serving.predict import load_image

    rd = RunDir(run_dir)
    if rd.predictions.exists():
        try:
            p = rd.load_predictions()
            root = Path(p.get("root", ""))
            paths = [root / it["path"] for it in p.get("items", [])]
            paths = [q for q in paths if q.exists()][:n]
            if paths:
                return torch.stack([load_image(q, size) for q in paths]), f"{len(paths)} target images of the run"
        except (OSError, ValueError, KeyError):
            pass
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=g), f"{n} random images"


def export_run(run_dir: str | Path, fmt: str = "onnx", which: str = "selected", out_dir: str | Path | None = None,
               name: str = "student", opset: int = 18) -> ExportResult:
    """Export a run's student (+ head) to ``out_dir/name.{onnx,pt}`` with its JSON sidecar."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    run = Path(run_dir)
    loaded = load_student_run(run, which)
    model, head_desc = deploy_model(loaded)
    size = int(loaded.image_size)
    rd = RunDir(run)
    out = Path(out_dir) if out_dir is not None else rd.export_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{FORMATS[fmt]}"
    t0 = time.time()
    save_model(model, fmt, path, size, opset)
    seconds = time.time() - t0

    x, what = check_images(run, size)
    with torch.no_grad():
        ref = model(x).numpy()
    got = run_exported(path, x.numpy())
    diff = float(abs(got - ref).max())
    cfg = loaded.config
    args = cfg.get("args", {})
    final = rd.final() or {}
    summary = final.get("swad" if which == "swad" else "selected", {}) or {}
    meta: dict[str, Any] = {
        "format": fmt,
        "file": path.name,
        "sha256": file_digest(path),
        "classes": list(loaded.classes),
        "input": {"name": INPUT_NAME, "shape": ["batch", 3, size, size], "dtype": "float32", "layout": "NCHW",
                  "color": "RGB", "range": [0.0, 1.0]},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", len(loaded.classes)], "dtype": "float32",
                   "meaning": "class logits; softmax gives probabilities; argmax is the prediction"},
        "preprocessing": {"resize": [size, size], "interpolation": "bilinear, antialiased", "keep_aspect": False,
                          "crop": None, "scale": "uint8 / 255 -> [0, 1]", "color": "RGB (alpha composited on white, "
                          "palette/greyscale converted)", "normalization": "inside the model (student mean/std)",
                          "same_as": "vl2v.data.transforms.eval_view"},
        "head": head_desc,
        "algorithm": cfg.get("spec", {}).get("algorithm"),
        "hparams": spec_options(cfg.get("spec", {})),
        "student": args.get("student"),
        "teacher": args.get("teacher"),
        "teacher_identity": args.get("teacher_identity"),
        "source_run": {"run_dir": str(run.resolve()), "checkpoint": which, "weights": loaded.weights_path.name,
                       "dataset": args.get("dataset"), "domains": cfg.get("domains"),
                       "target": _target_name(cfg),
                       "trial_seed": args.get("trial_seed"), "ood_acc": summary.get("ood_acc"),
                       "id_acc": summary.get("id_acc"), "step": summary.get("step")},
        "parity": {"max_abs_logit_diff": diff, "images": what, "against": "the PyTorch model of the run"},
        "export": {"vl2v": __version__, "torch": torch.__version__, "opset": opset if fmt == "onnx" else None,
                   "seconds": round(seconds, 2)},
    }
    from vl2v.utils.io import atomic_write_json

    side = sidecar_path(path)
    atomic_write_json(side, meta)
    return ExportResult(path, side, meta)


def _target_name(cfg: dict[str, Any]) -> str | None:
    domains, test = cfg.get("domains") or [], cfg.get("args", {}).get("test_envs") or []
    return domains[test[0]] if test and 0 <= test[0] < len(domains) else None


def save_model(model: nn.Module, fmt: str, path: str | Path, image_size: int, opset: int = 18) -> Path:
    """Write ``model`` (images [B,3,S,S] -> logits) as ONNX (dynamic batch) or TorchScript at ``path``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    example = torch.rand(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    model = model.eval()
    if fmt == "onnx":
        _export_onnx(model, example, path, opset)
    else:
        _export_torchscript(model, example, path)
    return path


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as exc:
        raise ExportError("ONNX export needs the 'onnx' and 'onnxscript' packages (pip install onnx onnxscript)") from exc
    from vl2v.utils.io import atomic_path

    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                 dynamic_shapes={"images": {0: batch}}, opset_version=opset,
                                 external_data=False, verbose=False)
        prog.save(str(tmp), external_data=False)
    try:
        import onnx

        onnx.checker.check_model(str(path))
    except ImportError:
        pass


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    from vl2v.utils.io import atomic_path

    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(tmp))


def run_exported(path: str | Path, x) -> Any:
    """Logits of an exported model (by file suffix) for float32 images [B,3,S,S] in [0,1] (numpy)."""
    import numpy as np

    path = Path(path)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if path.suffix == ".onnx":
        sess = onnx_session(path)
        return sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = torch.jit.load(str(path), map_location="cpu").eval()
    with torch.no_grad():
        return m(torch.from_numpy(x)).numpy()


def onnx_session(path: str | Path, threads: int | None = None):
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError("running an ONNX model needs onnxruntime (pip install onnxruntime)") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
