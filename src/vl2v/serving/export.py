"""Export a trained student as one deployable model: ONNX (onnxruntime) or TorchScript.

The exported graph is the student with its head (the algorithm's own ``head()``,
:mod:`vl2v.methods.heads`) baked in, taking float RGB images ``[B, 3, S, S]`` in
[0, 1] (the student's own mean/std normalisation is inside the graph) and
returning class logits ``[B, C]``:

* ADiP (and any algorithm predicting with a projection and the teacher's text
  classifier): ``100 * cos(P(g(x)), T_c)``; the normalised text embeddings are
  constants of the graph, so no teacher is needed at inference. VL2V-SD likewise,
  without the projection.
* ERM / LP-FT / KD: the linear classifier on the student's features.
* Others (RISE, ADiP's fixed-prototype controls): the algorithm's own ``logits``.

Beside the model file ``NAME.EXT`` a sidecar ``NAME.EXT.json`` records what a
caller needs: class names, input size and eval preprocessing (resize to
S x S, RGB in [0, 1]), the teacher identity, the algorithm and the source run,
and the parity of the exported model with the PyTorch one on a check batch.

Open vocabulary: an ONNX student with a text-space head also returns ``embedding``
(``z = normalize(P(g(x)))``, [B, D]), and its class text embeddings, scale and prompt
templates are data beside it (``NAME.classes.json``, and the sidecar's
``open_vocabulary`` section), so new class names need only their text embeddings:
for the offline teachers (conse, lit) the teacher's text tower is exported too
(``text.onnx`` + ``wordpiece.py``/``vocab.txt``/``wordpiece.json``, see
:mod:`vl2v.serving.text_export`).
"""

from __future__ import annotations

import json
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
from vl2v.methods.base import Algorithm
from vl2v.methods.heads import AlgorithmHead, CosineHead, LinearHead  # noqa: F401  (LinearHead: re-exported)
from vl2v.runs.layout import RunDir, spec_options
from vl2v.utils.hashing import file_digest

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
WHICH = ("selected", "swad")
INPUT_NAME, OUTPUT_NAME, EMBEDDING_NAME = "images", "logits", "embedding"
CLASSES_SUFFIX = ".classes.json"


class ExportError(ConfigError):
    """A model cannot be exported (or loaded for prediction) as asked; the message says why."""


# --------------------------------------------------------------------------- the deployed model
class DeployModel(nn.Module):
    """Student + head: images [B,3,S,S] float in [0,1] -> logits [B,C]; with ``with_embedding`` (a
    :class:`CosineHead` only) -> (logits [B,C], the normalised embedding z [B,D])."""

    def __init__(self, student: nn.Module, head: nn.Module, with_embedding: bool = False) -> None:
        super().__init__()
        if with_embedding and not isinstance(head, CosineHead):
            raise ExportError(f"only a cosine-to-text head has an embedding output, not {type(head).__name__}")
        self.student = student
        self.head = head
        self.with_embedding = with_embedding

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        feats = self.student(images)
        if not self.with_embedding:
            return self.head(feats)
        z = self.head.embedding(feats)
        return self.head.scale * (z @ self.head.classifier.t()), z


def build_head(algorithm: Algorithm) -> tuple[nn.Module, dict[str, Any]]:
    """The algorithm's prediction head (its ``head()``) as a small module, and a description for the sidecar.

    The head is checked against ``algorithm.logits`` on random features; an algorithm without a head of its
    own (``head()`` None), or one whose head disagrees, is exported with its own ``logits`` as is.
    """
    own = algorithm.head()
    head: nn.Module = own if own is not None else AlgorithmHead(algorithm)
    feat_dim = getattr(algorithm.student, "feature_dim", None)
    if feat_dim and not isinstance(head, AlgorithmHead):
        f = torch.randn(4, int(feat_dim), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            try:
                ref, got = algorithm.logits(f), head(f)
                same = ref.shape == got.shape and torch.allclose(ref, got, atol=1e-4, rtol=1e-5)
            except RuntimeError:  # a head of the wrong shape for these features
                same = False
        if not same:
            head = AlgorithmHead(algorithm)
    return head, head.describe()


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


def deploy_model(loaded, with_embedding: bool = False) -> tuple[DeployModel, dict[str, Any]]:
    """The run's student + head; ``with_embedding``: also the embedding output, where the head has one."""
    algo = loaded.algorithm.eval()
    head, desc = build_head(algo)
    model = DeployModel(algo.student, head, with_embedding and isinstance(head, CosineHead)).eval()
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
    from vl2v.serving.images import load_image

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
    """Export a run's student (+ head) to ``out_dir/name.{onnx,pt}`` with its JSON sidecar.

    An ONNX student with a cosine-to-text head (adip, sd) gets a second output, ``embedding``, and its class
    embeddings, scale and prompt templates are written as data (``name.classes.json``); for an offline
    teacher (conse, lit) the teacher's text tower is written beside it (:mod:`vl2v.serving.text_export`)."""
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    run = Path(run_dir)
    loaded = load_student_run(run, which)
    model, head_desc = deploy_model(loaded, with_embedding=fmt == "onnx")
    size = int(loaded.image_size)
    rd = RunDir(run)
    out = Path(out_dir) if out_dir is not None else rd.export_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{FORMATS[fmt]}"
    t0 = time.time()
    save_model(model, fmt, path, size, opset)
    seconds = time.time() - t0
    meta = _sidecar(loaded, run, path, which, head_desc, _parity(model, path, run, size))
    meta["export"] = {"vl2v": __version__, "torch": torch.__version__, "opset": opset if fmt == "onnx" else None,
                      "seconds": round(seconds, 2)}
    if model.with_embedding:
        meta["open_vocabulary"] = write_open_vocabulary(loaded, model.head, path, opset)
    from vl2v.utils.io import atomic_write_json

    side = sidecar_path(path)
    atomic_write_json(side, meta)
    return ExportResult(path, side, meta)


def _parity(model: DeployModel, path: Path, run: Path, size: int) -> dict[str, Any]:
    """The exported file against the PyTorch model on the run's images: logits (and the embedding output)."""
    x, what = check_images(run, size)
    with torch.no_grad():
        out = model(x)
    logits = out[0] if isinstance(out, tuple) else out
    got = run_exported(path, x.numpy())
    parity: dict[str, Any] = {"max_abs_logit_diff": float(abs(got - logits.numpy()).max()), "images": what,
                              "against": "the PyTorch model of the run"}
    if isinstance(out, tuple):
        z = onnx_session(path).run([EMBEDDING_NAME], {INPUT_NAME: x.numpy()})[0]
        parity["max_abs_embedding_diff"] = float(abs(z - out[1].numpy()).max())
    return parity


def _sidecar(loaded, run: Path, path: Path, which: str, head_desc: dict[str, Any],
             parity: dict[str, Any]) -> dict[str, Any]:
    cfg = loaded.config
    args = cfg.get("args", {})
    size = int(loaded.image_size)
    final = RunDir(run).final() or {}
    summary = final.get("swad" if which == "swad" else "selected", {}) or {}
    return {
        "format": "onnx" if path.suffix == ".onnx" else "torchscript",
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
        "parity": parity,
    }


# --------------------------------------------------------------------------- open vocabulary (text heads)
def classes_path(model_path: str | Path) -> Path:
    """``student.onnx`` -> ``student.classes.json``: the class names and embeddings of an exported text head."""
    p = Path(model_path)
    return p.with_name(p.stem + CLASSES_SUFFIX)


def write_open_vocabulary(loaded, head: CosineHead, model_path: Path, opset: int = 18) -> dict[str, Any]:
    """Write the class embeddings as data (``NAME.classes.json``) and, for an offline teacher, its text tower
    (``text.onnx`` and the tokenizer); returns the sidecar's ``open_vocabulary`` section."""
    from vl2v.serving.text_export import TextTowerError, run_text_encoder, write_text_bundle

    cfg = loaded.config
    args, prompts = cfg.get("args", {}), cfg.get("prompts") or {}
    templates = list(prompts.get("templates") or [])
    names = list(prompts.get("class_names") or [])
    if len(names) != len(loaded.classes):
        from vl2v.teachers.prompts import class_name

        names = [class_name(c) for c in loaded.classes]
    text = head.classifier.detach().float().numpy()
    info: dict[str, Any] = {
        "embedding_output": {"name": EMBEDDING_NAME, "shape": ["batch", int(text.shape[1])], "dtype": "float32",
                             "meaning": "z = normalize(P(g(x))), the student's embedding in the teacher's text space"},
        "scale": head.scale, "templates": templates, "classes_file": classes_path(model_path).name,
        "rule": "logits_c = scale * z . T_c, T_c = normalize(mean over templates t of text(t.format(c=name)))"}
    write_classes_file(classes_path(model_path), loaded.classes, names, text, templates, head.scale,
                       args.get("teacher_identity"))
    encoder, why = run_text_encoder(args) if templates else (None, "the run records no prompt templates")
    if encoder is not None:
        try:
            tower = write_text_bundle(encoder, model_path.parent, opset)
            tower["parity"] = text_parity(encoder, model_path.parent, templates, names, text, args.get("store_dtype"))
            return {**info, "text_tower": tower}
        except TextTowerError as exc:
            why = str(exc)
    return {**info, "text_tower": None, "why_no_text_tower": why}


def write_classes_file(path: Path, classes: list[str], names: list[str], emb, templates: list[str], scale: float,
                       teacher_identity: str | None) -> None:
    """``NAME.classes.json``: one embedding row (float32, shortest round-trip digits) a line."""
    import numpy as np

    from vl2v.utils.io import atomic_write_text

    head = {"format": "vl2v-classes/1", "classes": list(classes), "names": list(names), "templates": templates,
            "scale": scale, "dim": int(emb.shape[1]), "teacher_identity": teacher_identity,
            "rule": "logits_c = scale * z . embeddings[c] (z: the model's embedding output)"}
    rows = ",\n".join("  [" + ", ".join(str(v) for v in np.asarray(r, np.float32)) + "]" for r in emb)
    text = json.dumps(head, indent=1, ensure_ascii=False)[:-2] + f',\n "embeddings": [\n{rows}\n ]\n}}\n'
    atomic_write_text(path, text)


def text_parity(encoder, folder: Path, templates: list[str], names: list[str], run_text, store_dtype: str | None):
    """text.onnx (with wordpiece.py) against the teacher's sentence encoder on the training prompts, and the
    class embeddings built from it against the run's (the teacher store rounded training's to ``store_dtype``)."""
    import numpy as np

    from vl2v.serving.text_export import TextBundle, class_embeddings
    from vl2v.teachers.prompts import prompts_for

    texts = prompts_for(names, templates, names)
    got = TextBundle(folder, templates).embed(texts)
    with torch.no_grad():
        ref = F.normalize(encoder.encode(texts, convert_to_tensor=True, batch_size=128, show_progress_bar=False)
                          .float().cpu(), dim=-1).numpy()
    stored = got.astype(np.float16).astype(np.float32) if store_dtype == "float16" else got
    return {"prompts": len(texts), "max_abs_text_diff": float(abs(got - ref).max()),
            "against": "the teacher's sentence encoder (sentence-transformers) on the training prompts",
            "max_abs_class_embedding_diff": float(abs(class_embeddings(got, len(names), len(templates)) - run_text).max()),
            "max_abs_class_embedding_diff_store_rounded": float(abs(
                class_embeddings(stored, len(names), len(templates)) - run_text).max()),
            "store_dtype": store_dtype}


def _target_name(cfg: dict[str, Any]) -> str | None:
    domains, test = cfg.get("domains") or [], cfg.get("args", {}).get("test_envs") or []
    return domains[test[0]] if test and 0 <= test[0] < len(domains) else None


def save_model(model: nn.Module, fmt: str, path: str | Path, image_size: int, opset: int = 18) -> Path:
    """Write ``model`` (images [B,3,S,S] -> logits, and ``embedding`` for a DeployModel ``with_embedding``) as
    ONNX (dynamic batch) or TorchScript at ``path``."""
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
    from vl2v.serving.text_export import rename_output
    from vl2v.utils.io import atomic_path

    names = [OUTPUT_NAME, EMBEDDING_NAME] if getattr(model, "with_embedding", False) else [OUTPUT_NAME]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (example,), dynamo=True, input_names=[INPUT_NAME],
                                 dynamic_shapes={"images": {0: batch}}, opset_version=opset,
                                 external_data=False, verbose=False)
        rename_output(prog.model.graph, *names)
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
