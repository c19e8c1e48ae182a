"""``vl2v eval``: top-1 accuracy, per-class accuracy and confusion matrix of a trained model on a labelled folder.

The model is anything :func:`vl2v.serving.predict.load_predictor` takes (a run directory, its
``.safetensors`` checkpoint, an exported ``.onnx`` / TorchScript ``.pt`` file with its sidecar); a
``zeroshot`` run is evaluated as the teacher's zero-shot classifier. The folder is either

* ``FOLDER/class/image`` (every top-level folder holds images), or
* ``FOLDER/domain/class/image`` (every top-level folder holds only class folders): scored per
  domain and over all domains.

Images are found recursively under each class folder (as training's scan does). Class folders are
matched to the model's class names exactly (the folder names the run was trained on). A folder class
the model does not know is an error, unless the model is a run with a text-space head (``adip``,
``sd``) or a ``zeroshot`` run: then its name is embedded with the run's teacher text tower and prompt
templates and added to the model's classes (:func:`vl2v.serving.predict.load_text_predictor`).
Every image is predicted with :meth:`Predictor.predict_files` (top-1), so the accuracy is exactly the
fraction of files whose ``vl2v predict`` top-1 is their folder's class. Unreadable images are counted
and listed, not scored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vl2v.errors import ConfigError
from vl2v.serving.predict import few_names

LAYOUTS = ("class/image", "domain/class/image")
MAX_TEXT_COLUMNS = 30  # wider confusion matrices are left to --json


class EvalError(ConfigError):
    """The labelled folder or the model cannot be evaluated as asked; the message (one line) says why."""


# --------------------------------------------------------------------------- the labelled folder
@dataclass
class LabelledFolder:
    root: Path
    layout: str  # one of LAYOUTS
    classes: list[str]  # class folder names holding at least one image file, sorted
    domains: list[str]  # domain folder names ([] for class/image)
    files: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # each file's class folder
    file_domains: list[str | None] = field(default_factory=list)  # each file's domain folder (None: class/image)
    notes: list[str] = field(default_factory=list)  # empty folders, left out


def _subdirs(path: Path) -> list[str]:
    from vl2v.data.folder import list_subdirs

    try:
        return list_subdirs(path)
    except OSError as exc:
        raise EvalError(f"cannot list folder {path}: {exc.strerror or exc}") from None


def _direct_images(path: Path) -> list[str]:
    from vl2v.data.images import is_image_file

    try:
        return sorted(e.name for e in os.scandir(path) if is_image_file(e.name) and not e.is_dir())
    except OSError:
        return []


def _images_under(path: Path) -> list[Path]:
    """Image files under ``path``, recursively (hidden folders left out), sorted; broken links kept (reported
    as unreadable later)."""
    from vl2v.data.images import is_image_file

    out = []
    for p in path.rglob("*"):
        rel = p.relative_to(path).parts
        if is_image_file(p.name) and not p.is_dir() and not any(part.startswith(".") for part in rel[:-1]):
            out.append(p)
    return sorted(out)


def scan_labelled_folder(root: str | Path) -> LabelledFolder:
    """Detect the layout of ``root`` and list its images with their class (and domain); EvalError when unusable."""
    root = Path(root).expanduser()
    expect = "expected FOLDER/class/image or FOLDER/domain/class/image"
    if not root.exists():
        raise EvalError(f"--data {root} does not exist ({expect})")
    if not root.is_dir():
        raise EvalError(f"--data {root} is not a folder ({expect})")
    tops = _subdirs(root)
    if not tops:
        stray = _direct_images(root)
        hint = (f"; its {len(stray)} image file{'s lie' if len(stray) > 1 else ' lies'} directly in it: move each "
                "into a folder named after its class") if stray else ""
        raise EvalError(f"--data {root} has no sub-folders ({expect}){hint}")
    flat = [t for t in tops if _direct_images(root / t)]
    nested = [t for t in tops if t not in flat and _subdirs(root / t)]
    if flat and nested:
        raise EvalError(f"--data {root} mixes two layouts: its folders {few_names(flat)} hold images (class/image) "
                        f"but {few_names(nested)} hold only folders (domain/class/image); use one layout for the "
                        "whole folder")
    if not flat and not nested:
        raise EvalError(f"--data {root} holds no images: its folders ({few_names(tops)}) are empty ({expect})")
    empty = [t for t in tops if t not in flat and t not in nested]
    if flat:
        out = LabelledFolder(root, LAYOUTS[0], [], [])
        out.notes += [f"{t}/: empty class folder, left out" for t in empty]
        for c in flat:
            _add_class(out, root / c, c, None)
    else:
        out = LabelledFolder(root, LAYOUTS[1], [], list(nested))
        out.notes += [f"{t}/: empty folder, left out" for t in empty]
        for d in nested:
            for c in _subdirs(root / d):
                _add_class(out, root / d / c, c, d)
    if not out.files:
        raise EvalError(f"--data {root} holds no image files under its class folders ({expect})")
    out.classes = sorted(set(out.labels))
    return out


def _add_class(out: LabelledFolder, folder: Path, cls: str, domain: str | None) -> None:
    files = _images_under(folder)
    if not files:
        out.notes.append(f"{folder.relative_to(out.root).as_posix()}/: no image files, left out")
        return
    out.files += files
    out.labels += [cls] * len(files)
    out.file_domains += [domain] * len(files)


# --------------------------------------------------------------------------- scores
@dataclass
class Scores:
    """A confusion matrix over a label set: rows are true classes, columns predicted classes."""

    classes: list[str]
    confusion: np.ndarray  # int64 [C, C]

    @classmethod
    def empty(cls, classes: Sequence[str]) -> "Scores":
        return cls(list(classes), np.zeros((len(classes), len(classes)), dtype=np.int64))

    @property
    def images(self) -> int:
        return int(self.confusion.sum())

    @property
    def correct(self) -> int:
        return int(np.trace(self.confusion))

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.images if self.images else None

    def per_class(self) -> dict[str, dict[str, Any]]:
        """Every class with at least one image: images, correct, accuracy (recall)."""
        out = {}
        for i, c in enumerate(self.classes):
            n = int(self.confusion[i].sum())
            if n:
                k = int(self.confusion[i, i])
                out[c] = {"images": n, "correct": k, "accuracy": k / n}
        return out

    @property
    def mean_per_class_accuracy(self) -> float | None:
        accs = [v["accuracy"] for v in self.per_class().values()]
        return float(np.mean(accs)) if accs else None

    def as_dict(self) -> dict[str, Any]:
        return {"images": self.images, "correct": self.correct, "accuracy": self.accuracy,
                "mean_per_class_accuracy": self.mean_per_class_accuracy, "per_class": self.per_class(),
                "confusion": {"rows": "true class", "columns": "predicted class", "classes": self.classes,
                              "matrix": self.confusion.tolist()}}


@dataclass
class EvalResult:
    model: str
    kind: str  # pytorch, onnx, torchscript or teacher (a zero-shot run)
    algorithm: str | None
    data: LabelledFolder
    classes: list[str]  # the model's label set (columns of the confusion matrices)
    embedded: list[str]  # folder classes the run did not know, embedded with its teacher
    overall: Scores
    domains: dict[str, Scores]
    unreadable: list[tuple[str, str]]  # (path, reason)
    teacher_identity: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "kind": self.kind, "algorithm": self.algorithm,
                "teacher_identity": self.teacher_identity, "data": str(self.data.root), "layout": self.data.layout,
                "classes": self.classes, "folder_classes": self.data.classes, "embedded_classes": self.embedded,
                "domains": {d: s.as_dict() for d, s in self.domains.items()}, "overall": self.overall.as_dict(),
                "unreadable": [{"path": p, "error": e} for p, e in self.unreadable], "notes": self.data.notes}


# --------------------------------------------------------------------------- evaluation
def evaluate(model: str | Path, data: str | Path, which: str = "selected", store: str | Path | None = None,
             batch_size: int = 64) -> EvalResult:
    """Score ``model`` on the labelled folder ``data`` (see the module docstring)."""
    from vl2v.utils.progress import bar

    if batch_size < 1:
        raise EvalError(f"--batch-size must be at least 1, got {batch_size}")
    folder = scan_labelled_folder(data)
    pred, embedded = predictor_for(model, folder, which, store)
    index = {c: i for i, c in enumerate(pred.classes)}
    overall = Scores.empty(pred.classes)
    domains = {d: Scores.empty(pred.classes) for d in folder.domains}
    unreadable: list[tuple[str, str]] = []
    pbar = bar(len(folder.files), desc="eval", unit="img")
    try:
        for s in range(0, len(folder.files), batch_size):
            chunk = folder.files[s:s + batch_size]
            for k, p in enumerate(pred.predict_files(chunk, topk=1, batch_size=batch_size)):
                if p.error:
                    unreadable.append((p.path, p.error))
                    continue
                t, y = index[folder.labels[s + k]], index[p.top[0][0]]
                overall.confusion[t, y] += 1
                dom = folder.file_domains[s + k]
                if dom is not None:
                    domains[dom].confusion[t, y] += 1
            pbar.update(len(chunk))
    finally:
        pbar.close()
    if not overall.images:
        path, why = unreadable[0]
        raise EvalError(f"none of the {len(folder.files)} images under {folder.root} could be read "
                        f"(first: {path}: {why})")
    return EvalResult(pred.source, pred.kind, pred.meta.get("algorithm"), folder, list(pred.classes), embedded,
                      overall, domains, unreadable, pred.meta.get("teacher_identity"))


def predictor_for(model: str | Path, folder: LabelledFolder, which: str, store: str | Path | None):
    """The model's predictor, and the folder classes it did not know (embedded with its teacher; else EvalError)."""
    from vl2v.methods import get_algorithm
    from vl2v.serving.predict import ClassList, NoTextHeadError, load_predictor, load_text_predictor, run_algorithm

    path = Path(model)
    if path.is_dir() and (path / "config.json").exists() and not get_algorithm(run_algorithm(path)).cls.has_student:
        pred = load_text_predictor(path, ClassList.of_folders(folder.classes), which, store, keep_run_classes=True)
        return pred, list(pred.meta.get("embedded_classes") or [])
    pred = load_predictor(path, which=which)
    unknown = [c for c in folder.classes if c not in pred.classes]
    if not unknown:
        return pred, []
    head = (f"{folder.root} has {len(unknown)} class folder{'s' if len(unknown) > 1 else ''} the model does not "
            f"know: {few_names(unknown)} (it knows {few_names(pred.classes)}); rename such folders to the model's "
            "class names (the folder names it was trained on) or leave them out")
    if pred.kind not in ("pytorch", "onnx"):
        raise EvalError(head + "; for an adip or sd model, evaluate its run directory or its ONNX export (with its "
                        "text tower) to embed the new names")
    try:
        pred = load_text_predictor(path, ClassList.of_folders(unknown), which, store, keep_run_classes=True)
    except NoTextHeadError as exc:
        if pred.kind == "onnx":
            raise EvalError(f"{head}; {exc}") from None
        raise EvalError(f"{head}; new names can be embedded only for runs of adip, sd and zeroshot "
                        f"(this run is {pred.meta.get('algorithm') or '?'})") from None
    except ConfigError as exc:
        raise EvalError(f"{head}; embedding them with the run's teacher failed: {exc}") from None
    return pred, unknown


# --------------------------------------------------------------------------- text output
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in cells]


def _acc(a: float | None) -> str:
    return "-" if a is None else f"{a:.4f}"


def format_result(res: EvalResult) -> str:
    f, o = res.data, res.overall
    where = f"{len(f.domains)} domains, " if f.domains else ""
    lines = [f"model: {res.model} ({res.kind}{', ' + res.algorithm if res.algorithm else ''})",
             f"data:  {f.root} ({f.layout}: {where}{len(f.classes)} classes, {len(f.files)} images)"]
    if res.embedded:
        lines.append(f"classes embedded with the run's teacher: {', '.join(res.embedded)}")
    lines.append(f"top-1 accuracy: {_acc(o.accuracy)} ({o.correct} / {o.images})   "
                 f"mean per-class accuracy: {_acc(o.mean_per_class_accuracy)}")
    if f.domains:
        rows = [[d, s.images, s.correct, _acc(s.accuracy)] for d, s in res.domains.items()]
        lines += ["", *_table(["domain", "images", "correct", "accuracy"], rows + [["all", o.images, o.correct,
                                                                                     _acc(o.accuracy)]])]
    per = o.per_class()
    lines += ["", *_table(["class", "images", "correct", "accuracy"],
                          [[c, v["images"], v["correct"], _acc(v["accuracy"])] for c, v in per.items()])]
    lines += ["", *_confusion_lines(o, "all domains" if f.domains else "")]
    if res.unreadable:
        lines += ["", f"{len(res.unreadable)} of {len(f.files)} images could not be read (not scored):"]
        lines += [f"  {p}: {e}" for p, e in res.unreadable[:20]]
        if len(res.unreadable) > 20:
            lines.append(f"  ... and {len(res.unreadable) - 20} more (--json lists all)")
    if f.notes:
        lines += ["", *f.notes]
    return "\n".join(lines)


def _confusion_lines(s: Scores, what: str) -> list[str]:
    """Rows: the true classes present; columns: those classes, then any other class predicted."""
    rows = [i for i in range(len(s.classes)) if s.confusion[i].sum()]
    cols = rows + [j for j in range(len(s.classes)) if j not in rows and s.confusion[:, j].sum()]
    title = f"confusion matrix (rows: true class, columns: predicted class{'; ' + what if what else ''})"
    if len(cols) > MAX_TEXT_COLUMNS:
        return [f"{title}: {len(cols)} columns, too wide to print; --json holds it"]
    header = ["true \\ predicted"] + [s.classes[j] for j in cols]
    return [title, *_table(header, [[s.classes[i]] + [int(s.confusion[i, j]) for j in cols] for i in rows])]
