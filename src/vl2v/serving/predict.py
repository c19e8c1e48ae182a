"""Top-k predictions from a trained student: a run directory, its checkpoint, or an exported model.

``load_predictor(path)`` accepts
* a run directory (``OUT/<algo>/target-<i>-<domain>/seed<s>``): the PyTorch model
  of its selected checkpoint (``which="swad"`` for the SWAD average);
* a run's checkpoint file (``model.safetensors`` / ``swad.safetensors``);
* an exported ``.onnx`` file (run with onnxruntime) or TorchScript ``.pt`` file,
  with the JSON sidecar ``vl2v export`` wrote next to it (class names, input size).

Every kind sees the same preprocessing: decode to RGB, resize to S x S
(bilinear, antialiased), scale to [0, 1] (:func:`vl2v.data.transforms.eval_view`).

``load_text_predictor(run, ClassList)`` classifies with class names the run was not
trained on (``vl2v predict --classes``): the names are embedded with the run's own
teacher text tower and prompt templates (answers cached in the teacher store), and
replace the class text embeddings of a text-space head (``adip``, ``sd``:
``100 * cos(student embedding, T_c)``); a ``zeroshot`` run predicts with the teacher
itself. Runs with a linear classifier (``erm_*``, ``lp_ft``, ``kd``, ``rise``) cannot.
An exported ``student.onnx`` of a text-space head can too when its export folder holds
the teacher's text tower (``text.onnx`` and its tokenizer: offline teachers), with
onnxruntime alone (:class:`vl2v.serving.text_export.TextBundle`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from vl2v.errors import ConfigError
from vl2v.runs.layout import RunDir
from vl2v.serving.export import INPUT_NAME, OUTPUT_NAME, ExportError, load_student_run, onnx_session, sidecar_path
from vl2v.serving.images import load_image  # noqa: F401  (re-exported: vl2v.serving.predict.load_image)


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
                 kind: str, source: str, meta: dict[str, Any] | None = None,
                 loader: Callable[[str | Path, int], torch.Tensor] | None = None) -> None:
        self._logits = logits_fn
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.kind = kind
        self.source = source
        self.meta = meta or {}
        self.loader = loader or load_image  # path, size -> float [3, size, size] in [0, 1]

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
                good.append((i, self.loader(p, self.image_size)))
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


# --------------------------------------------------------------------------- new class names (text heads)
# algorithms whose runs take new class names (their heads compare with T_c; checked again by has_text_head())
TEXT_HEAD_ALGORITHMS = ("adip", "sd", "zeroshot")


class ClassNamesError(ConfigError):
    """Class names for ``--classes`` are unusable, or the model cannot take new class names."""


class NoTextHeadError(ClassNamesError):
    """The model predicts with a fixed classifier (or is an exported file): new class names cannot be embedded."""


@dataclass(frozen=True)
class ClassList:
    """The classes to predict: ``labels`` name the predictions, ``names`` (one per label) go into the prompts."""

    labels: list[str]
    names: list[str]

    @classmethod
    def of_folders(cls, folders: Sequence[str]) -> "ClassList":
        """Class folder names, prompted as training prompts them ("_" -> " ")."""
        from vl2v.teachers.prompts import class_name

        return cls(list(folders), [class_name(f) for f in folders])


def parse_class_list(classes: str | None = None, classes_file: str | Path | None = None) -> ClassList:
    """``--classes "kite,harp,owl"`` or ``--classes-file FILE`` (one name a line, or a JSON ``{folder: name}``
    object as training's ``--classnames`` takes) -> a :class:`ClassList`; ClassNamesError on bad input."""
    from vl2v.teachers.prompts import class_name

    if classes is not None and classes_file is not None:
        raise ClassNamesError("give the class names with --classes or with --classes-file, not both")
    if classes is not None:
        where, labels, names = "--classes", [c.strip() for c in classes.split(",")], None
        if all(not c for c in labels):
            labels = []
    elif classes_file is not None:
        where = f"--classes-file {classes_file}"
        labels, names = _read_class_file(Path(classes_file).expanduser(), where)
    else:
        raise ClassNamesError("no class names given: pass --classes \"kite,harp,owl\" or --classes-file FILE")
    if not labels:
        raise ClassNamesError(f"{where} is empty: give at least two class names, e.g. --classes \"kite,harp,owl\"")
    if "" in labels:
        raise ClassNamesError(f"{where} has an empty name (name {labels.index('') + 1} of {len(labels)}): "
                              "separate the names with single commas")
    names = names if names is not None else [class_name(c) for c in labels]
    for what, seq in (("class", labels), ("prompt name", names)):
        seen: dict[str, int] = {}
        for i, n in enumerate(seq):
            if n.lower() in seen:
                j = seen[n.lower()]
                same = f"{n!r} twice" if seq[j] == n else f"{seq[j]!r} twice (as {seq[j]!r} and {n!r})"
                raise ClassNamesError(f"{where} gives the {what} {same}, names {j + 1} and {i + 1} of "
                                      f"{len(seq)}: give each class once")
            seen[n.lower()] = i
    if len(labels) < 2:
        raise ClassNamesError(f"{where} names one class ({labels[0]!r}): a classifier needs at least two")
    return ClassList(labels, names)


def _read_class_file(path: Path, where: str) -> tuple[list[str], list[str] | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ClassNamesError(f"cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None
    if path.suffix.lower() != ".json" and not text.lstrip().startswith("{"):
        return [line.strip() for line in text.splitlines() if line.strip()], None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClassNamesError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ClassNamesError(f"{where} must be a JSON object of class (folder) name -> prompt name, "
                              "like training's --classnames file, or a text file with one name a line")
    return [k.strip() for k in data], [v.strip() for v in data.values()]


class RunTeacherText:
    """A run's teacher text tower as in training: the same teacher (checked by identity), the run's prompt
    templates, answers through a :class:`~vl2v.teachers.store.TeacherStore` (``store``: a file, ``"memory"``,
    or None for the default store)."""

    def __init__(self, run_dir: Path, store: str | Path | None = None) -> None:
        from vl2v.teachers.registry import create_teacher
        from vl2v.teachers.store import TeacherStore, default_store_path

        cfg = _run_config(run_dir)
        args, prompts = cfg.get("args", {}), cfg.get("prompts") or {}
        self.templates = list(prompts.get("templates") or [])
        self.run_names = list(prompts.get("class_names") or [])
        if not args.get("teacher") or not self.templates:
            raise ClassNamesError(f"{run_dir}/config.json records no teacher or no prompt templates (a run of an "
                                  "older vl2v?): new class names cannot be embedded as in its training")
        self.teacher = create_teacher(args["teacher"], **(args.get("teacher_options") or {}))
        want, got = args.get("teacher_identity"), self.teacher.identity()
        if want != got:
            raise ClassNamesError(f"run {run_dir} was trained with teacher {want}, but {args['teacher']!r} here is "
                                  f"{got}: its text embeddings would not match the student's; use the same teacher "
                                  "weights and version as in training")
        path = None if str(store) == "memory" else Path(store).expanduser() if store else default_store_path()
        self.store = TeacherStore(self.teacher, path)

    def classifier(self, labels: Sequence[str], names: Sequence[str]) -> torch.Tensor:
        """T_c [C, D], normalised: the mean of each class's normalised prompt embeddings (as in training)."""
        from vl2v.teachers.prompts import prompts_for, text_classifier

        emb = self.store.text_embeddings(prompts_for(list(labels), self.templates, list(names)))
        return text_classifier(emb, len(labels), len(self.templates))


def _run_config(run_dir: Path) -> dict[str, Any]:
    rd = RunDir(run_dir)
    if not run_dir.is_dir() or not rd.has_config():
        raise FileNotFoundError(f"{run_dir} is not a vl2v run directory (no config.json); "
                                "pass OUT/<algorithm>/target-<i>-<domain>/seed<s>")
    return dict(rd.config() or {})


def run_location(path: str | Path, which: str = "selected") -> tuple[Path, str]:
    """The run directory and checkpoint of a run directory or a run's ``.safetensors`` file.
    NoTextHeadError for an exported model (its class embeddings are constants of the file)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist")
    if p.is_dir():
        return p, which
    if p.suffix == ".safetensors" and RunDir(p.parent).has_config():
        return p.parent, RunDir.which_weights(p)
    if p.suffix in (".onnx", ".pt"):
        src = ""
        try:
            src = f" ({_read_sidecar(p)['source_run']['run_dir']})"
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            pass
        raise NoTextHeadError(f"{p} is an exported model: its class embeddings are fixed in the file; pass the run "
                              f"directory it was exported from{src} to use other class names")
    raise ClassNamesError(f"cannot use {p}: expected a run directory or a run's .safetensors checkpoint")


def run_algorithm(run_dir: Path) -> str:
    cfg = _run_config(run_dir)
    return str(cfg.get("spec", {}).get("algorithm") or cfg.get("args", {}).get("algorithm", "?"))


def has_text_head(algorithm: torch.nn.Module) -> bool:
    """Does ``algorithm`` have a student that predicts by comparing with class text embeddings, which new class
    names can replace (its ``text_classes()``: ADiP, SD; not a linear classifier, nor ADiP's fixed-prototype
    controls)? A zero-shot run has no student: :func:`load_text_predictor` asks its teacher instead."""
    text_classes = getattr(algorithm, "text_classes", None)
    if getattr(algorithm, "student", None) is None or not callable(text_classes):
        return False
    return text_classes() is not None


def load_text_predictor(path: str | Path, classes: ClassList, which: str = "selected",
                        store: str | Path | None = None, keep_run_classes: bool = False) -> Predictor:
    """A predictor over ``classes`` (their names embedded with the run's teacher), for a run with a text-space
    head or a zero-shot run, or an exported ``.onnx`` with its text tower (:func:`bundle_predictor`).
    ``keep_run_classes``: the run's own classes first (their trained embeddings kept), then those of
    ``classes`` it does not know. NoTextHeadError for any other model."""
    from vl2v.methods import get_algorithm
    from vl2v.serving.export import deploy_model

    if Path(path).suffix == ".onnx" and Path(path).is_file():
        return bundle_predictor(Path(path), classes, keep_run_classes)
    run_dir, which = run_location(path, which)
    name = run_algorithm(run_dir)
    if not get_algorithm(name).cls.has_student:
        return _zeroshot_predictor(run_dir, classes, store, keep_run_classes)
    loaded = load_student_run(run_dir, which) if name in TEXT_HEAD_ALGORITHMS else None
    if loaded is None or not has_text_head(loaded.algorithm):
        known = list(_run_config(run_dir).get("classes") or [])
        raise NoTextHeadError(f"run {run_dir} is '{name}': it predicts with a classifier over its {len(known)} "
                              f"training classes ({few_names(known)}), so it cannot take new class names; "
                              f"runs of {', '.join(TEXT_HEAD_ALGORITHMS)} can (they predict in the teacher's text "
                              "space)")
    algo = loaded.algorithm
    todo = [(c, n) for c, n in zip(classes.labels, classes.names) if not (keep_run_classes and c in loaded.classes)]
    embedded = [c for c, _ in todo]
    labels = list(loaded.classes) + embedded if keep_run_classes else embedded
    if todo:
        own = algo.text_classes()
        fresh = RunTeacherText(run_dir, store).classifier(embedded, [n for _, n in todo]).to(own)
        algo.set_text_classes(torch.cat([own, fresh]) if keep_run_classes else fresh)
    model, head = deploy_model(loaded)
    meta = {"algorithm": name, "teacher_identity": loaded.teacher_identity, "head": head, "checkpoint": which,
            "embedded_classes": embedded}
    return Predictor(_torch_fn(model), labels, loaded.image_size, "pytorch", str(run_dir), meta)


def bundle_predictor(path: Path, classes: ClassList, keep_run_classes: bool = False) -> Predictor:
    """An exported ``student.onnx`` over ``classes``: its ``embedding`` output against the class names embedded
    with the ``text.onnx`` and tokenizer exported beside it (``100 * cos``). NoTextHeadError, naming the run to
    use instead, for an export without them."""
    from vl2v.serving.export import EMBEDDING_NAME, classes_path
    from vl2v.serving.text_export import TextBundle, TextTowerError

    meta = _read_sidecar(path)
    ov = meta.get("open_vocabulary") or {}
    run = (meta.get("source_run") or {}).get("run_dir")
    use_run = f"pass the run directory it was exported from ({run or '?'}) to use other class names"
    kind = (meta.get("head") or {}).get("kind")
    if not ov and kind in ("linear", "algorithm-logits"):
        raise NoTextHeadError(f"{path} is an exported model of '{meta.get('algorithm') or '?'}': it predicts with a "
                              f"classifier over its {len(meta['classes'])} training classes "
                              f"({few_names(meta['classes'])}), so it cannot take new class names; runs of "
                              f"{', '.join(TEXT_HEAD_ALGORITHMS)} can (they predict in the teacher's text space)")
    if not ov:
        raise NoTextHeadError(f"{path} is an exported model without an embedding output (exported by an older vl2v?): "
                              f"its class embeddings are fixed in the file; {use_run}")
    if not ov.get("text_tower"):
        why = " ".join(str(ov.get("why_no_text_tower") or "?").split())
        raise NoTextHeadError(f"{path} is an exported model without a text tower ({why}); {use_run}")
    try:
        text = TextBundle(path.parent, ov["templates"])
        labels, names = list(classes.labels), list(classes.names)
        t = text.classifier(names)
        embedded = labels
        if keep_run_classes:
            known = json.loads(classes_path(path).read_text(encoding="utf-8"))
            new = [i for i, c in enumerate(labels) if c not in known["classes"]]
            embedded = [labels[i] for i in new]
            labels = list(known["classes"]) + embedded
            t = np.concatenate([np.asarray(known["embeddings"], np.float32), t[new]])
    except (OSError, ValueError, KeyError) as exc:
        raise TextTowerError(f"{path.parent}: its text tower or class file cannot be read ({exc}); export the "
                             "run again") from None
    sess, scale = onnx_session(path), float(ov.get("scale", 100.0))
    fn = lambda x: scale * sess.run([EMBEDDING_NAME], {INPUT_NAME: x})[0] @ t.T  # noqa: E731
    info = {"algorithm": meta.get("algorithm"), "teacher_identity": meta.get("teacher_identity"),
            "head": meta.get("head"), "embedded_classes": embedded, "text_tower": ov["text_tower"]["model"]}
    return Predictor(fn, labels, int(meta["input"]["shape"][-1]), "onnx", str(path), {**meta, **info})


def _zeroshot_predictor(run_dir: Path, classes: ClassList, store: str | Path | None,
                        keep_run_classes: bool) -> Predictor:
    """The teacher itself: ``100 * cos(f_I(x), T_c)`` on the teacher's own evaluation view."""
    from vl2v.methods.base import cosine_logits

    enc = RunTeacherText(run_dir, store)
    labels, names = list(classes.labels), list(classes.names)
    embedded = labels
    if keep_run_classes:
        run_classes = list(_run_config(run_dir).get("classes") or [])
        run_names = enc.run_names if len(enc.run_names) == len(run_classes) else ClassList.of_folders(run_classes).names
        new = [(c, n) for c, n in zip(labels, names) if c not in run_classes]
        embedded = [c for c, _ in new]
        labels, names = run_classes + embedded, run_names + [n for _, n in new]
    text = enc.classifier(labels, names)

    def fn(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return cosine_logits(enc.store.query_images(torch.from_numpy(x)).float(), text).numpy()

    meta = {"algorithm": "zeroshot", "teacher_identity": enc.teacher.identity(), "head": {"kind": "teacher"},
            "embedded_classes": embedded}
    return Predictor(fn, labels, enc.teacher.image_size, "teacher", str(run_dir), meta, loader=_teacher_image)


def _teacher_image(path: str | Path, size: int) -> torch.Tensor:
    """The teacher's own evaluation view of an image file (what training showed the zero-shot teacher)."""
    from vl2v.data.images import load_rgb
    from vl2v.data.transforms import teacher_view

    arr = torch.from_numpy(np.asarray(load_rgb(path), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()
    return teacher_view(arr, None, size)


def few_names(names: Sequence[str], n: int = 10) -> str:
    """``a, b, c``; a long list cut after ``n`` names, with its length (for one-line messages)."""
    if len(names) <= n + 2:
        return ", ".join(names)
    return ", ".join(names[:n]) + f", ... ({len(names)} in all)"


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

