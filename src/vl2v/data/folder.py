"""Scan a ``ROOT/domain/class/image`` folder into an ordered list of labelled images.

The order follows DomainBed (which uses torchvision's ``ImageFolder`` per
domain): domains sorted by name, classes sorted by name, files in sorted
``os.walk`` order under each class folder. Keeping that order makes our 80/20
splits identical to DomainBed's for the same trial seed.

Problems are collected, not raised: each :class:`FolderIssue` names the path
and the reason. ``strict=True`` turns any issue into a :class:`FolderError`.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from vl2v.data.images import ImageDecodeError, is_image_file, load_rgb
from vl2v.errors import ConfigError, UserError


class FolderError(UserError, ValueError):
    """A dataset folder is unusable; the message lists every problem found."""


@dataclass(frozen=True)
class ImageRecord:
    path: str  # path relative to the dataset root, '/'-separated
    domain: int
    label: int


@dataclass(frozen=True)
class FolderIssue:
    path: str
    reason: str
    fatal: bool = False  # a dataset error: `vl2v data check` fails on it
    tolerable: bool = False  # ...but training can go on without the affected images (it warns and records it)

    def __str__(self) -> str:
        label = "warning" if self.tolerable else "ERROR" if self.fatal else "skipped"
        return f"{label}: {self.path}: {self.reason}"


@dataclass
class FolderScan:
    root: Path
    domains: list[str]
    classes: list[str]
    items: list[ImageRecord]
    issues: list[FolderIssue] = field(default_factory=list)

    @property
    def fatal_issues(self) -> list[FolderIssue]:
        return [i for i in self.issues if i.fatal]

    @property
    def skipped(self) -> list[FolderIssue]:
        return [i for i in self.issues if not i.fatal]

    def counts(self) -> dict[str, dict[str, int]]:
        c = Counter((r.domain, r.label) for r in self.items)
        return {
            dom: {cls: c[(di, ci)] for ci, cls in enumerate(self.classes)}
            for di, dom in enumerate(self.domains)
        }

    def abspath(self, rec: ImageRecord) -> Path:
        return self.root / rec.path

    @property
    def blocking_issues(self) -> list[FolderIssue]:
        """Errors that make training impossible (tolerable ones, like an empty class folder, only warn)."""
        return [i for i in self.issues if i.fatal and not i.tolerable]

    def raise_if_fatal(self) -> None:
        if self.blocking_issues:
            lines = "\n  ".join(str(i) for i in self.blocking_issues)
            raise FolderError(f"dataset folder {self.root} is not usable:\n  {lines}")


def _walk_guarded(class_dir: Path, issues: list[FolderIssue], root: Path) -> list[Path]:
    """Image files under ``class_dir`` in torchvision's order (``sorted(os.walk(...))``).

    ``os.walk(followlinks=True)`` would recurse forever through a symlink loop,
    so folders are walked by hand, tracking the real path of each visited one.
    """
    per_dir: list[tuple[str, list[Path]]] = []
    seen: set[str] = set()
    stack = [class_dir]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen:
            issues.append(FolderIssue(_rel(d, root), "symlink loop or second link to a folder already "
                                      "scanned; not followed"))
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            issues.append(FolderIssue(_rel(d, root), f"cannot list folder ({exc.strerror or exc})"))
            continue
        files: list[Path] = []
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=True):
                    stack.append(Path(e.path))
                    continue
            except OSError:
                pass
            if not is_image_file(e.name):
                continue
            p = Path(e.path)
            if not p.exists():
                issues.append(FolderIssue(_rel(p, root), "broken symlink"))
                continue
            files.append(p)
        per_dir.append((str(d), files))
    per_dir.sort(key=lambda t: t[0])
    return [p for _, files in per_dir for p in files]


def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def dataset_domains(name: str | None, root: str | None = None, data_dir: str | None = None) -> list[str]:
    """The domain names of a registered dataset (``name``, its entry's) or of a ``data_dir`` folder (the
    sub-folders :func:`scan_folder` will find), without reading an image: the one place they are listed
    before the data is loaded."""
    from vl2v.data.registry import resolve_dataset

    spec, folder = resolve_dataset(name if data_dir is None else None, root, data_dir)
    if spec is not None:
        return list(spec.domains)
    if not folder.is_dir():
        raise ConfigError(f"--data {data_dir}: no such folder (expected ROOT/domain/class/image files)")
    return list_subdirs(folder)


def list_subdirs(path: Path) -> list[str]:
    """Sorted names of the sub-folders of ``path``, hidden (dot) folders left out."""
    return sorted(e.name for e in os.scandir(path) if _is_dir(e) and not e.name.startswith("."))


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # e.g. a symlink loop (ELOOP)
        return False


def _stray_images(domain_dir: Path) -> list[str]:
    """Image files lying directly in a domain folder, outside any class folder."""
    try:
        return sorted(e.name for e in os.scandir(domain_dir) if is_image_file(e.name) and not _is_dir(e))
    except OSError:
        return []


def scan_folder(
    root: str | os.PathLike[str],
    *,
    verify: bool = True,
    strict: bool = False,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> FolderScan:
    """Scan ``root`` (``root/domain/class/image``) and validate it.

    ``verify`` decodes every image with :func:`load_rgb`; undecodable files are
    skipped and reported. Fatal problems (no domains, an empty domain, class sets
    that differ across domains, empty classes, fewer than two classes) are
    reported with ``fatal=True``; ``strict`` also fails on skipped files.
    """
    root = Path(root)
    if not root.exists():
        raise FolderError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise FolderError(f"dataset path {root} is not a folder (expected ROOT/domain/class/image)")
    issues: list[FolderIssue] = []
    domains = list_subdirs(root)
    if not domains:
        raise FolderError(f"dataset folder {root} has no domain sub-folders (expected ROOT/domain/class/image)")

    per_domain_classes, unreadable = _list_classes(root, domains, issues)
    all_classes = sorted(set().union(*per_domain_classes.values()))
    _check_class_sets(domains, per_domain_classes, unreadable, all_classes, issues)
    items = _read_images(root, domains, per_domain_classes, all_classes, issues, verify, progress)
    _check_counts(domains, per_domain_classes, all_classes, items, issues)

    scan = FolderScan(root=root, domains=domains, classes=all_classes, items=items, issues=issues)
    if strict and issues:
        lines = "\n  ".join(str(i) for i in issues)
        raise FolderError(f"strict mode: dataset folder {root} has problems:\n  {lines}")
    return scan


def _list_classes(root: Path, domains: list[str],
                  issues: list[FolderIssue]) -> tuple[dict[str, list[str]], set[str]]:
    """Each domain's class folders (sorted), and the domains whose folder cannot be listed; an unreadable
    domain folder and images lying outside a class folder are added to ``issues``."""
    per_domain_classes: dict[str, list[str]] = {}
    unreadable: set[str] = set()
    for d in domains:
        try:
            per_domain_classes[d] = list_subdirs(root / d)
        except OSError as exc:
            per_domain_classes[d] = []
            unreadable.add(d)
            issues.append(FolderIssue(d, f"cannot list domain folder ({exc.strerror or exc})", fatal=True))
        for name in _stray_images(root / d):
            issues.append(FolderIssue(f"{d}/{name}", "image outside a class folder (expected "
                                      "domain/class/image); ignored"))
    return per_domain_classes, unreadable


def _check_class_sets(domains: list[str], per_domain_classes: dict[str, list[str]], unreadable: set[str],
                      all_classes: list[str], issues: list[FolderIssue]) -> None:
    """Report domains without class folders, and classes missing from some domains."""
    for d in domains:
        if d in unreadable:
            continue
        if not per_domain_classes[d]:
            issues.append(FolderIssue(d, "empty domain: no class folders", fatal=True))
            continue
        missing = [c for c in all_classes if c not in per_domain_classes[d]]
        for c in missing:
            issues.append(FolderIssue(f"{d}/{c}", f"class {c!r} is missing in domain {d!r} (present in other domains)", fatal=True,
                                      tolerable=True))


def _read_images(root: Path, domains: list[str], per_domain_classes: dict[str, list[str]], all_classes: list[str],
                 issues: list[FolderIssue], verify: bool,
                 progress: Callable[[Iterable], Iterable] | None) -> list[ImageRecord]:
    """The image files of every class folder, in DomainBed's order; with ``verify`` each is decoded and an
    undecodable one is reported in ``issues`` instead."""
    files: list[tuple[int, int, Path]] = []
    for di, d in enumerate(domains):
        for c in per_domain_classes[d]:
            ci = all_classes.index(c)
            for p in _walk_guarded(root / d / c, issues, root):
                files.append((di, ci, p))

    it: Iterable = files
    if verify and progress is not None:
        it = progress(files)
    items: list[ImageRecord] = []
    for di, ci, p in it:
        if verify:
            try:
                load_rgb(p)
            except ImageDecodeError as exc:
                issues.append(FolderIssue(_rel(p, root), exc.reason))
                continue
        items.append(ImageRecord(_rel(p, root), di, ci))
    return items


def _check_counts(domains: list[str], per_domain_classes: dict[str, list[str]], all_classes: list[str],
                  items: list[ImageRecord], issues: list[FolderIssue]) -> None:
    """Report domains and class folders without a readable image, and a dataset of fewer than two classes."""
    counts = Counter((r.domain, r.label) for r in items)
    for di, d in enumerate(domains):
        if not per_domain_classes[d]:
            continue
        n_dom = sum(counts[(di, ci)] for ci in range(len(all_classes)))
        if n_dom == 0:
            issues.append(FolderIssue(d, "empty domain: no readable images", fatal=True))
            continue
        for c in per_domain_classes[d]:
            ci = all_classes.index(c)
            if counts[(di, ci)] == 0:
                issues.append(FolderIssue(f"{d}/{c}", "empty class folder: no readable images", fatal=True,
                                          tolerable=True))
    if len(all_classes) < 2:
        issues.append(FolderIssue(".", f"need at least 2 classes, found {len(all_classes)}", fatal=True))
