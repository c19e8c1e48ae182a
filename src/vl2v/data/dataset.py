"""A scanned dataset: its images (in memory or streamed from disk), content hashes, DomainBed splits.

:class:`ImageBank` gives every image as a uint8 tensor [3, H, W], shrunk so its
shorter side is at most ``max_side`` (views are rendered from it at any size).
Each image's *content hash* (SHA-256 of its decoded pixels and shape) keys the
teacher-embedding store, so renamed or moved files still hit the cache and a
changed file never does.

Two modes, the same images bit for bit:

* **memory**: every decoded image is held (fast; small datasets);
* **stream**: only hashes and shapes are held; an image is decoded from disk each
  time it is needed (by :mod:`torch.utils.data` loader workers in training), so
  memory stays flat in the dataset's size (DomainNet).

``mode="auto"`` streams when the decoded images would exceed ``memory_budget`` bytes.
Indexing (decode once, hash, measure) runs in loader workers when ``workers > 0``.
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


#: decoded bytes above which ``mode="auto"`` streams images from disk instead of holding them
DEFAULT_MEMORY_BUDGET = 4 << 30


class _Decoder(torch.utils.data.Dataset):
    """Loader-worker side of indexing: decode one file, return (image or None, hash, shape) or the error."""

    def __init__(self, root: Path, records: list[ImageRecord], max_side: int | None, keep: bool) -> None:
        self.root, self.records, self.max_side, self.keep = root, records, max_side, keep

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        try:
            img, h = decode_for_bank(self.root / self.records[i].path, self.max_side)
        except ImageDecodeError as exc:  # file changed since the scan
            return i, None, None, None, exc.reason
        return i, (img if self.keep else None), h, (int(img.shape[1]), int(img.shape[2])), None


def _first(batch):
    return batch[0]


@dataclass
class ImageBank:
    """The dataset's images (held, or streamed from disk), their content hashes and shapes, in scan order."""

    root: Path
    records: list[ImageRecord]
    images: list[torch.Tensor] | None  # None: streamed (decoded on demand)
    hashes: list[str]
    skipped: list[FolderIssue] = field(default_factory=list)
    shapes: list[tuple[int, int]] = field(default_factory=list)  # (H, W) after shrinking
    max_side: int | None = 256

    @classmethod
    def load(cls, scan: FolderScan, max_side: int | None = 256, desc: str = "loading images", mode: str = "memory",
             memory_budget: int = DEFAULT_MEMORY_BUDGET, workers: int = 0) -> "ImageBank":
        """Index (and, in memory mode, hold) every image of ``scan``; unreadable files are skipped and listed."""
        if mode not in ("auto", "memory", "stream"):
            raise ValueError(f"data mode must be auto, memory or stream, got {mode!r}")
        if mode == "auto":
            side = max_side or 512
            mode = "stream" if len(scan.items) * 3 * side * side * 4 // 3 > memory_budget else "memory"
        keep = mode == "memory"
        images: list[torch.Tensor] | None = [] if keep else None
        hashes: list[str] = []
        shapes: list[tuple[int, int]] = []
        records: list[ImageRecord] = []
        skipped: list[FolderIssue] = []
        ds = _Decoder(scan.root, list(scan.items), max_side, keep)
        loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=workers, collate_fn=_first,
                                             prefetch_factor=8 if workers else None)
        for i, img, h, shape, err in progress(loader, desc=desc + (" (index only: streamed)" if not keep else ""),
                                              total=len(ds), unit="img"):
            rec = ds.records[i]
            if err is not None:
                skipped.append(FolderIssue(rec.path, err))
                continue
            hashes.append(h)
            shapes.append(shape)
            records.append(rec)
            if keep:
                images.append(img)
        return cls(scan.root, records, images, hashes, skipped, shapes, max_side)

    @property
    def streamed(self) -> bool:
        return self.images is None

    def image(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 [3, H, W] (held, or decoded from disk now)."""
        if self.images is not None:
            return self.images[i]
        try:
            img, _ = decode_for_bank(self.root / self.records[i].path, self.max_side)
        except ImageDecodeError as exc:
            raise ImageDecodeError(self.root / self.records[i].path,
                                   f"{exc.reason} (the file changed after indexing; run again)") from None
        return img

    def aspect(self, i: int) -> float:
        """Width / height of image ``i`` (as held, after shrinking)."""
        h, w = self.shapes[i]
        return w / h

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class DomainData:
    """Images of every domain plus the in/out split of each domain for one trial seed.

    ``seen`` (class indices of the folder, sorted): the classes training may see, for a benchmark of classes
    never seen in training (:meth:`holding_out`). Then :attr:`classes`, :attr:`labels` and :meth:`split_items`
    speak of the seen classes only (the held-out classes' images are in no split, their label is -1), and
    :attr:`all_classes`, :attr:`all_labels` and :meth:`all_split_items` of every class. ``None``: every class.
    """

    scan: FolderScan
    bank: ImageBank
    trial_seed: int
    holdout_fraction: float
    domain_index: list[list[int]]  # bank indices per domain, in scan order
    splits: list[DomainSplit]
    seen: tuple[int, ...] | None = None

    @property
    def domains(self) -> list[str]:
        return self.scan.domains

    @property
    def classes(self) -> list[str]:
        if self.seen is None:
            return self.scan.classes
        return [self.scan.classes[c] for c in self.seen]

    @property
    def all_classes(self) -> list[str]:
        return self.scan.classes

    @property
    def novel(self) -> list[int]:
        """The held-out classes (indices into :attr:`all_classes`); empty when every class is seen."""
        return [] if self.seen is None else [c for c in range(len(self.scan.classes)) if c not in self.seen]

    @property
    def all_labels(self) -> torch.Tensor:
        return torch.tensor([r.label for r in self.bank.records], dtype=torch.long)

    @property
    def labels(self) -> torch.Tensor:
        """Each image's class among :attr:`classes` (-1: a held-out class)."""
        if self.seen is None:
            return self.all_labels
        pos = {c: k for k, c in enumerate(self.seen)}
        return torch.tensor([pos.get(r.label, -1) for r in self.bank.records], dtype=torch.long)

    def with_seed(self, trial_seed: int) -> "DomainData":
        """The same images with the splits of another trial seed."""
        splits = [domain_split(d, len(ix), trial_seed, self.holdout_fraction) for d, ix in enumerate(self.domain_index)]
        return DomainData(self.scan, self.bank, trial_seed, self.holdout_fraction, self.domain_index, splits,
                          self.seen)

    def holding_out(self, novel: list[int]) -> "DomainData":
        """The same images and splits with the classes ``novel`` (indices into :attr:`all_classes`) held out of
        every split: what a novel-class benchmark trains and validates on."""
        n = len(self.scan.classes)
        bad = [c for c in novel if not 0 <= c < n]
        if bad:
            raise ValueError(f"held-out classes {bad} out of range: the dataset has classes 0..{n - 1}")
        seen = tuple(c for c in range(n) if c not in set(novel))
        return DomainData(self.scan, self.bank, self.trial_seed, self.holdout_fraction, self.domain_index,
                          self.splits, seen if novel else None)

    def all_split_items(self, domain: int, which: str) -> list[int]:
        """Bank indices of ``domain``'s ``"in"`` (80%) or ``"out"`` (20%) split, every class."""
        idx = self.domain_index[domain]
        sp = self.splits[domain]
        pos = sp.in_idx if which == "in" else sp.out_idx
        return [idx[i] for i in pos]

    def split_items(self, domain: int, which: str) -> list[int]:
        """Bank indices of ``domain``'s ``"in"`` (80%) or ``"out"`` (20%) split (seen classes only)."""
        items = self.all_split_items(domain, which)
        if self.seen is None:
            return items
        seen = set(self.seen)
        recs = self.bank.records
        return [i for i in items if recs[i].label in seen]


def load_domain_data(
    folder: str | os.PathLike[str],
    trial_seed: int = 0,
    holdout_fraction: float = 0.2,
    max_side: int | None = 256,
    strict: bool = False,
    scan: FolderScan | None = None,
    mode: str = "memory",
    workers: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> DomainData:
    """Scan, validate and index (``mode``: memory, stream or auto) a ``ROOT/domain/class/image`` folder."""
    if scan is None:
        scan = scan_folder(folder, verify=False, strict=False)
    scan.raise_if_fatal()
    bank = ImageBank.load(scan, max_side=max_side, mode=mode, workers=workers, memory_budget=memory_budget)
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
