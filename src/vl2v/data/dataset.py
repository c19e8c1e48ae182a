"""A scanned dataset in memory: decoded images, content hashes, DomainBed splits.

:class:`ImageBank` holds every image as a uint8 tensor [3, H, W], shrunk so its
shorter side is at most ``max_side`` (views are rendered from it at any size).
Each image's *content hash* (SHA-256 of its decoded pixels and shape) keys the
teacher-embedding store, so renamed or moved files still hit the cache and a
changed file never does.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vl2v.data.folder import FolderIssue, FolderScan, ImageRecord, scan_folder
from vl2v.data.images import ImageDecodeError, load_rgb
from vl2v.data.splits import DomainSplit, domain_split
from vl2v.utils.progress import progress


def pixels_hash(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _shrink(img: Image.Image, max_side: int | None) -> Image.Image:
    if max_side is None:
        return img
    w, h = img.size
    short = min(w, h)
    if short <= max_side:
        return img
    s = max_side / short
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BICUBIC)


def decode_for_bank(path, max_side: int | None = 256) -> tuple[torch.Tensor, str]:
    """Decode, shrink and hash one image the way :class:`ImageBank` holds it: (uint8 [3,H,W], content hash)."""
    arr = np.asarray(_shrink(load_rgb(path), max_side), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous(), pixels_hash(arr)


@dataclass
class ImageBank:
    """Decoded images and their content hashes, in scan order."""

    root: Path
    records: list[ImageRecord]
    images: list[torch.Tensor]
    hashes: list[str]
    skipped: list[FolderIssue] = field(default_factory=list)

    @classmethod
    def load(cls, scan: FolderScan, max_side: int | None = 256, desc: str = "loading images") -> "ImageBank":
        images: list[torch.Tensor] = []
        hashes: list[str] = []
        records: list[ImageRecord] = []
        skipped: list[FolderIssue] = []
        for rec in progress(scan.items, desc=desc, unit="img"):
            try:
                img, h = decode_for_bank(scan.abspath(rec), max_side)
            except ImageDecodeError as exc:  # file changed since the scan
                skipped.append(FolderIssue(rec.path, exc.reason))
                continue
            hashes.append(h)
            images.append(img)
            records.append(rec)
        return cls(scan.root, records, images, hashes, skipped)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class DomainData:
    """Images of every domain plus the in/out split of each domain for one trial seed."""

    scan: FolderScan
    bank: ImageBank
    trial_seed: int
    holdout_fraction: float
    domain_index: list[list[int]]  # bank indices per domain, in scan order
    splits: list[DomainSplit]

    @property
    def domains(self) -> list[str]:
        return self.scan.domains

    @property
    def classes(self) -> list[str]:
        return self.scan.classes

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([r.label for r in self.bank.records], dtype=torch.long)

    def with_seed(self, trial_seed: int) -> "DomainData":
        """The same images with the splits of another trial seed."""
        splits = [domain_split(d, len(ix), trial_seed, self.holdout_fraction) for d, ix in enumerate(self.domain_index)]
        return DomainData(self.scan, self.bank, trial_seed, self.holdout_fraction, self.domain_index, splits)

    def split_items(self, domain: int, which: str) -> list[int]:
        """Bank indices of ``domain``'s ``"in"`` (80%) or ``"out"`` (20%) split."""
        idx = self.domain_index[domain]
        sp = self.splits[domain]
        pos = sp.in_idx if which == "in" else sp.out_idx
        return [idx[i] for i in pos]


def load_domain_data(
    folder: str | os.PathLike[str],
    trial_seed: int = 0,
    holdout_fraction: float = 0.2,
    max_side: int | None = 256,
    strict: bool = False,
    scan: FolderScan | None = None,
) -> DomainData:
    """Scan, validate and decode a ``ROOT/domain/class/image`` folder."""
    if scan is None:
        scan = scan_folder(folder, verify=False, strict=False)
    scan.raise_if_fatal()
    bank = ImageBank.load(scan, max_side=max_side)
    issues = scan.issues + bank.skipped
    if strict and issues:
        from vl2v.data.folder import FolderError

        lines = "\n  ".join(str(i) for i in issues)
        raise FolderError(f"strict mode: dataset folder {scan.root} has problems:\n  {lines}")
    scan.issues = issues
    domain_index: list[list[int]] = [[] for _ in scan.domains]
    for i, rec in enumerate(bank.records):
        domain_index[rec.domain].append(i)
    splits = [domain_split(d, len(ix), trial_seed, holdout_fraction) for d, ix in enumerate(domain_index)]
    return DomainData(scan, bank, trial_seed, holdout_fraction, domain_index, splits)
