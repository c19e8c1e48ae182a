"""``vl2v data check``: validate a dataset folder and print its counts.

:func:`check_dataset` scans ``ROOT/domain/class/image`` with
:func:`vl2v.data.folder.scan_folder` (decoding every image, with a progress
bar), and for a registered dataset compares what it finds with the
:class:`~vl2v.data.registry.DatasetSpec`. The :class:`CheckReport` says whether
the folder is usable (``ok``) and renders a per-class x per-domain table of
counts followed by every problem found, each naming its path and the reason.

What is an error (``ok`` is false, the command exits 1): a missing folder, an
empty domain, a class missing from some domain, an empty class, fewer than two
classes, missing or unexpected domains and a wrong class count for a registered
dataset; with ``strict`` also any unreadable file. What is a warning: unreadable
files that will be skipped (without ``strict``), symlink loops, image counts that
differ from the dataset's published counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vl2v.data.download import staging_path
from vl2v.data.folder import FolderError, FolderScan, scan_folder
from vl2v.data.registry import DatasetSpec, default_data_root, resolve_dataset

MAX_LISTED = 50  # problems of one kind printed before "... and N more"


def compare_with_spec(scan: FolderScan, spec: DatasetSpec, *, strict_counts: bool = False) -> tuple[list[str], list[str]]:
    """Compare a scanned folder with a registered dataset: ``(errors, warnings)``."""
    errors: list[str] = []
    warnings: list[str] = []
    expected_list = ", ".join(spec.domains)
    for d in spec.domains:
        if d not in scan.domains:
            errors.append(f"domain {d!r} is missing ({spec.name} has domains: {expected_list})")
    for d in scan.domains:
        if d not in spec.domains:
            errors.append(
                f"unexpected domain folder {d!r}: {spec.name} has domains {expected_list}; an extra folder "
                f"becomes an extra environment and shifts the domain indices. Move it out of {scan.root}"
            )
    if len(scan.classes) != spec.num_classes:
        errors.append(f"{len(scan.classes)} classes found, {spec.name} has {spec.num_classes}")
    known = spec.extra.get("classes")
    if known:
        for c in sorted(set(known) - set(scan.classes)):
            errors.append(f"class {c!r} of {spec.name} is missing")
        for c in sorted(set(scan.classes) - set(known)):
            errors.append(f"unexpected class folder {c!r} (not a class of {spec.name})")
    if spec.expected_images:
        counts = scan.counts()
        for d, want in spec.expected_images.items():
            if d not in counts:
                continue
            got = sum(counts[d].values())
            if got != want:
                msg = (f"domain {d!r} has {got} images, expected {want} ({got - want:+d}); "
                       f"see docs/datasets.md for where the expected counts come from")
                (errors if strict_counts else warnings).append(msg)
    return errors, warnings


@dataclass
class CheckReport:
    title: str
    folder: Path
    spec: DatasetSpec | None = None
    scan: FolderScan | None = None
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    hint: str | None = None
    size_bytes: int | None = None
    strict: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        """What :meth:`render` prints, as data (``vl2v data check --json``): counts per domain and class, every
        problem, and ``ok``."""
        scan = self.scan
        counts = scan.counts() if scan is not None else {}
        return {"dataset": self.spec.name if self.spec is not None else None, "title": self.title,
                "folder": str(self.folder), "ok": self.ok, "strict": self.strict,
                "domains": list(scan.domains) if scan is not None else [],
                "classes": list(scan.classes) if scan is not None else [],
                "counts": {d: {c: int(n) for c, n in counts[d].items()} for d in counts},
                "images": len(scan.items) if scan is not None else 0, "size_bytes": self.size_bytes,
                "expected_images": dict(self.spec.expected_images or {}) if self.spec is not None else None,
                "errors": list(self.errors), "warnings": list(self.warnings), "hint": self.hint}

    def render(self) -> str:
        lines = [f"{self.title}: {self.folder}"]
        if self.scan is not None:
            n = len(self.scan.items)
            size = f", {_human_bytes(self.size_bytes)}" if self.size_bytes is not None else ""
            lines.append(f"{len(self.scan.domains)} domains, {len(self.scan.classes)} classes, "
                         f"{n} readable images{size}")
            lines.append("")
            lines.extend(_counts_table(self.scan, self.spec))
        for header, items in (("warnings", self.warnings), ("errors", self.errors)):
            if items:
                lines.append("")
                lines.append(f"{header} ({len(items)}):")
                lines.extend(f"  - {m}" for m in items[:MAX_LISTED])
                if len(items) > MAX_LISTED:
                    lines.append(f"  ... and {len(items) - MAX_LISTED} more")
        if self.hint:
            lines.append("")
            lines.append(self.hint)
        lines.append("")
        if self.ok:
            lines.append("OK" + (f" ({len(self.warnings)} warnings)" if self.warnings else ""))
        else:
            lines.append(f"FAILED: {len(self.errors)} problem{'s' if len(self.errors) != 1 else ''}")
        return "\n".join(lines)


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _counts_table(scan: FolderScan, spec: DatasetSpec | None) -> list[str]:
    counts = scan.counts()
    domains = scan.domains
    first = max([len("class"), len("expected"), *(len(c) for c in scan.classes)])
    widths = [max(len(d), 6) for d in domains]

    def row(label: str, values: Iterable[object], total: object) -> str:
        cells = "  ".join(f"{str(v):>{w}}" for v, w in zip(values, widths))
        return f"{label:<{first}}  {cells}  {str(total):>7}"

    out = [row("class", domains, "total")]
    for c in scan.classes:
        vals = [counts[d][c] for d in domains]
        out.append(row(c, vals, sum(vals)))
    totals = [sum(counts[d].values()) for d in domains]
    out.append(row("total", totals, sum(totals)))
    if spec is not None and spec.expected_images:
        exp = [spec.expected_images.get(d, "-") for d in domains]
        known = [v for v in exp if isinstance(v, int)]
        out.append(row("expected", exp, sum(known) if known else "-"))
    return out


def _how_to_get(spec: DatasetSpec | None, root: Path | None) -> str:
    root_arg = f" --root {root}" if root is not None else ""
    if spec is None:
        return ("Expected a folder laid out as ROOT/domain/class/image (see docs/datasets.md); "
                "pass it with --data DIR.")
    if spec.downloader is not None:
        return f"Get it with: vl2v data download {spec.name}{root_arg}"
    if spec.builder is not None:
        return f"Build it with: vl2v data build {spec.name}{root_arg}"
    return "This dataset has no download or build command; place its folder there by hand."


def _progress(desc: str, enabled: bool):
    def wrap(items):
        from vl2v.utils.progress import progress

        return progress(items, desc=desc, unit="img", total=len(items), disable=not enabled)

    return wrap


def check_dataset(name: str | None = None, root: str | os.PathLike[str] | None = None,
                  data_dir: str | os.PathLike[str] | None = None, strict: bool = False,
                  *, progress: bool = True) -> CheckReport:
    """Validate a registered dataset (``name``, under ``root``) or a custom folder (``data_dir``)."""
    if name is None and data_dir is None:
        raise FolderError("give a registered dataset name (see `vl2v data list`) or --data DIR")
    spec, folder = resolve_dataset(name, root, data_dir)
    title = spec.name if spec is not None else "custom dataset"
    report = CheckReport(title=title, folder=folder, spec=spec, strict=strict)
    root_path = Path(root).expanduser() if root is not None else (None if spec is None else default_data_root())

    if not folder.exists():
        report.errors.append(f"dataset folder {folder} does not exist")
        report.hint = _how_to_get(spec, root_path if root is not None else None)
        if spec is not None and staging_path(folder.parent, spec.subdir).exists():
            report.hint += (f"\nAn interrupted download left {staging_path(folder.parent, spec.subdir)}; "
                            "running the download again resumes from the archives already fetched.")
        return report
    try:
        scan = scan_folder(folder, verify=True, strict=False, progress=_progress(f"checking {title}", progress))
    except FolderError as exc:
        report.errors.append(str(exc))
        report.hint = _how_to_get(spec, root_path if root is not None else None)
        return report
    report.scan = scan
    report.size_bytes = sum(_size(scan.abspath(r)) for r in scan.items)

    for issue in scan.issues:
        if issue.fatal:
            report.errors.append(f"{issue.path}: {issue.reason}")
        elif strict:
            report.errors.append(f"unreadable or skipped: {issue.path}: {issue.reason}")
        else:
            report.warnings.append(f"skipped: {issue.path}: {issue.reason}")
    if spec is not None:
        errs, warns = compare_with_spec(scan, spec)
        report.errors.extend(errs)
        report.warnings.extend(warns)
    return report


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
