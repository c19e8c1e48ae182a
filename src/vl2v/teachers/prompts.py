"""Class-name prompts and the text classifier T_c: the one place that maps a class folder to its prompt name.

T_c = normalize(mean over templates of normalize(f_T(template.format(c=name)))).

Prompt names: by default the folder names with "_" replaced by " " (:func:`class_name`);
``curated`` takes the dataset's names from ``vl2v/data/prompts/<Dataset>.json`` (package
data, like CLIP_benchmark's ``en_classnames.json``); a ``--classnames`` file overrides
either. Template sets by name (``--templates NAME``): the dataset file's ``templates``
first, then ``vl2v/data/prompts/templates.json`` (``default``, ``clip80``: CLIP's 80
ImageNet templates, ``rise``: RISE's 7).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

PROMPT_MODES = ("auto", "folder", "curated")


def class_name(folder: str) -> str:
    """The default prompt name of a class folder: "_" -> " "."""
    return folder.replace("_", " ").strip()


def class_prompt_names(classes: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """Each of ``classes``' name in the prompts: ``names`` (resolved from ``--prompt-names``/``--classnames``, one
    per class), else the folder names (:func:`class_name`)."""
    if names is None:
        return [class_name(c) for c in classes]
    if len(names) != len(classes):
        raise ValueError(f"{len(names)} prompt class names for {len(classes)} classes")
    return list(names)


def validate_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for t in templates:
        if "{c}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{c}}' placeholder for the class name")
    return tuple(templates)


def prompts_for(classes: Sequence[str], templates: Sequence[str], names: Sequence[str] | None = None) -> list[str]:
    """Every template for every class, class-major; ``names`` (one per class) replace :func:`class_name`."""
    if names is None:
        names = [class_name(c) for c in classes]
    if len(names) != len(classes):
        raise ValueError(f"{len(names)} prompt names for {len(classes)} classes")
    return [t.format(c=n) for n in names for t in templates]


def text_classifier(text_emb: torch.Tensor, n_classes: int, n_templates: int) -> torch.Tensor:
    """Average normalised prompt embeddings per class -> [C, D] normalised."""
    e = F.normalize(text_emb.float(), dim=-1).view(n_classes, n_templates, -1).mean(dim=1)
    return F.normalize(e, dim=-1)


# --------------------------------------------------------------------------- prompt files (package data)
def _prompt_dir():
    return resources.files("vl2v.data").joinpath("prompts")


@functools.cache
def prompt_file(dataset: str) -> dict[str, Any] | None:
    """``vl2v/data/prompts/<dataset>.json`` (``classnames``, ``templates``), or None when there is none."""
    f = _prompt_dir().joinpath(f"{dataset}.json")
    if not dataset or dataset.startswith(("_", ".")) or dataset == "templates" or not f.is_file():
        return None
    return json.loads(f.read_text(encoding="utf-8"))


def prompt_datasets() -> list[str]:
    """Datasets with a prompt file."""
    return sorted(p.name[:-5] for p in _prompt_dir().iterdir()
                  if p.name.endswith(".json") and p.name != "templates.json")


@functools.cache
def _shared_sets() -> dict[str, tuple[str, ...]]:
    data = json.loads(_prompt_dir().joinpath("templates.json").read_text(encoding="utf-8"))
    return {k: tuple(v) for k, v in data.items() if k != "comment"}


def template_sets(dataset: str | None = None) -> dict[str, tuple[str, ...]]:
    """Named template sets: the shared ones, overridden by the dataset file's."""
    sets = dict(_shared_sets())
    own = (prompt_file(dataset) or {}).get("templates", {}) if dataset else {}
    sets.update({k: tuple(v) for k, v in own.items()})
    return sets


def template_set(name: str, dataset: str | None = None) -> tuple[str, ...]:
    """The templates of set ``name`` (e.g. ``clip80``, ``rise``), validated; ValueError names the known sets."""
    sets = template_sets(dataset)
    if name not in sets:
        raise ValueError(f"unknown template set {name!r}; known: {', '.join(sorted(sets))}")
    return validate_templates(sets[name])


def curated_names(dataset: str | None) -> dict[str, str]:
    """The dataset's curated {folder: prompt name}; ValueError when it has no prompt file."""
    data = prompt_file(dataset) if dataset else None
    if data is None:
        raise ValueError(f"no curated class names for {dataset or 'a custom folder'!r} (prompt files exist for "
                         f"{', '.join(prompt_datasets())}); pass --classnames FILE, or --prompt-names folder")
    return dict(data["classnames"])


def read_classnames_file(path: str | Path, classes: Sequence[str]) -> dict[str, str]:
    """``--classnames FILE``: a JSON object {folder: name} (a subset is fine), or a text file with one name
    per line for every class in (sorted) folder order. Returns {folder: name}."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read --classnames file {p}: {exc.strerror or exc}") from None
    if p.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--classnames file {p} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise ValueError(f"--classnames file {p} must be a JSON object of folder name -> prompt name")
        unknown = sorted(set(data) - set(classes))
        if unknown:
            raise ValueError(f"--classnames file {p} names classes the dataset does not have: {unknown[:5]} "
                             f"(classes: {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''})")
        return {k: v.strip() for k, v in data.items()}
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != len(classes):
        raise ValueError(f"--classnames file {p} has {len(names)} names for {len(classes)} classes; one name per "
                         f"line, in folder order: {', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}")
    return dict(zip(classes, names))


def resolve_class_names(classes: Sequence[str], mode: str = "folder", dataset: str | None = None,
                        file: str | Path | None = None) -> list[str]:
    """The prompt name of each class folder (in ``classes``' order): ``folder`` or ``curated`` names (``auto``:
    curated where the dataset has a prompt file),
    overridden by a ``--classnames`` file. ValueError on an unknown mode, a missing curated name, a bad file."""
    if mode not in PROMPT_MODES:
        raise ValueError(f"unknown prompt-name mode {mode!r}; choose from {', '.join(PROMPT_MODES)}")
    names = {c: class_name(c) for c in classes}
    if mode == "auto":  # the curated names where the dataset has a prompt file, else the folder names
        mode = "curated" if dataset and prompt_file(dataset) is not None else "folder"
    if mode == "curated":
        cur = curated_names(dataset)
        missing = [c for c in classes if c not in cur]
        if missing:
            raise ValueError(f"the curated names of {dataset} lack classes {missing[:5]}; pass --classnames FILE")
        names.update({c: cur[c] for c in classes})
    if file:
        names.update(read_classnames_file(file, list(classes)))
    return [names[c] for c in classes]
