"""DomainBed's five image benchmarks: registry entries and downloaders.

Each dataset is registered with its domains in DomainBed's order (the sorted
folder names, as DomainBed's ``MultipleEnvironmentImageFolder`` lists them),
its class count, the published image count of every domain after DomainBed's
post-processing, the folder name DomainBed's ``download.py`` gives it, and
DomainBed's training defaults (checkpoint every 300 steps, 1000 for DomainNet;
5001 steps, 15001 for DomainNet as the VL2V authors run it).

The downloaders fetch from the same sources as DomainBed's ``download.py`` and
apply the same post-processing (see docs/datasets.md), built in
``ROOT/.NAME.incomplete`` and renamed to ``ROOT/NAME`` only when complete:

- VLCS: DomainBed's prebuilt ``VLCS.tar.gz`` (Google Drive), folder ``VLCS``.
- PACS: ``PACS.zip`` (Google Drive); its ``kfold`` folder becomes ``PACS``.
- OfficeHome: ``office_home.zip`` (Google Drive); ``OfficeHomeDataset_10072016``
  becomes ``office_home``.
- TerraIncognita: the Caltech Camera Traps ECCV'18 images and annotations; the
  images of locations 38, 43, 46 and 100 with one of 10 categories are copied to
  ``terra_incognita/location_XX/<category>/`` (an image annotated with two
  categories goes to both), everything else is dropped.
- DomainNet: the six domain zips, then the files on DomainBed's duplicate list
  (fetched at download time from DomainBed's repository at a pinned commit and
  checked against its SHA-256) are deleted.

Every downloader takes ``fetch=`` (see :mod:`vl2v.data.download`), so tests run
the whole pipeline on small local archives. Importing this module is cheap: no
torch, no PIL.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from vl2v.data import download as dl
from vl2v.data.download import DownloadError, Source
from vl2v.data.registry import DatasetSpec, register_dataset

# --------------------------------------------------------------------------- sources
# As in facebookresearch/DomainBed, domainbed/scripts/download.py (newest version).
VLCS_SOURCE = Source("https://drive.google.com/uc?id=1skwblH1_okBwxWxmRsp9_qi15hyPpxg8", "VLCS.tar.gz")
PACS_SOURCE = Source("https://drive.google.com/uc?id=1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd", "PACS.zip")
OFFICEHOME_SOURCE = Source("https://drive.google.com/uc?id=1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC", "office_home.zip")
_LILA = "https://storage.googleapis.com/public-datasets-lila/caltechcameratraps"
TERRA_SOURCES = {
    "images": Source(f"{_LILA}/eccv_18_all_images_sm.tar.gz", "eccv_18_all_images_sm.tar.gz"),
    "annotations": Source(f"{_LILA}/eccv_18_annotations.tar.gz", "eccv_18_annotations.tar.gz"),
}
_VISDA = "http://csr.bu.edu/ftp/visda/2019/multi-source"
DOMAINNET_SOURCES = {
    "clipart": Source(f"{_VISDA}/groundtruth/clipart.zip", "clipart.zip"),
    "infograph": Source(f"{_VISDA}/infograph.zip", "infograph.zip"),
    "painting": Source(f"{_VISDA}/groundtruth/painting.zip", "painting.zip"),
    "quickdraw": Source(f"{_VISDA}/quickdraw.zip", "quickdraw.zip"),
    "real": Source(f"{_VISDA}/real.zip", "real.zip"),
    "sketch": Source(f"{_VISDA}/sketch.zip", "sketch.zip"),
}
# DomainBed's list of DomainNet files to delete (9,431 lines). Fetched at download
# time, never stored in this repository; the commit and checksum pin its content.
DOMAINBED_COMMIT = "b93c22a1cfc3b2428398272c1a116c8de1f4139e"
DOMAINNET_DUPLICATES = Source(
    f"https://raw.githubusercontent.com/facebookresearch/DomainBed/{DOMAINBED_COMMIT}/domainbed/misc/domain_net_duplicates.txt",
    "domain_net_duplicates.txt",
    sha256="a52b4ab70203f4f3df381077694dba3e33ff44c26407e1c5faca76919c702770",
)

# TerraIncognita: DomainBed's four camera locations and ten categories.
TERRA_LOCATIONS = ("38", "46", "100", "43")
TERRA_CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel")
TERRA_IMAGES_DIR = "eccv_18_all_images_sm"

OFFICEHOME_CLASSES = (
    "Alarm_Clock", "Backpack", "Batteries", "Bed", "Bike", "Bottle", "Bucket", "Calculator", "Calendar",
    "Candles", "Chair", "Clipboards", "Computer", "Couch", "Curtains", "Desk_Lamp", "Drill", "Eraser",
    "Exit_Sign", "Fan", "File_Cabinet", "Flipflops", "Flowers", "Folder", "Fork", "Glasses", "Hammer",
    "Helmet", "Kettle", "Keyboard", "Knives", "Lamp_Shade", "Laptop", "Marker", "Monitor", "Mop", "Mouse",
    "Mug", "Notebook", "Oven", "Pan", "Paper_Clip", "Pen", "Pencil", "Postit_Notes", "Printer", "Push_Pin",
    "Radio", "Refrigerator", "Ruler", "Scissors", "Screwdriver", "Shelf", "Sink", "Sneakers", "Soda",
    "Speaker", "Spoon", "TV", "Table", "Telephone", "ToothBrush", "Toys", "Trash_Can", "Webcam",
)

Build = Callable[[dict[str, Path], Path, bool], Path]


# --------------------------------------------------------------------------- pipeline
def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


def _validate(folder: Path, spec: DatasetSpec, strict_counts: bool) -> tuple[list[str], list[str], dict[str, int]]:
    """Structure and count check without decoding images (``vl2v data check`` decodes)."""
    from vl2v.data.check import compare_with_spec
    from vl2v.data.folder import FolderError, scan_folder

    try:
        scan = scan_folder(folder, verify=False)
    except FolderError as exc:
        return [str(exc)], [], {}
    errors = [f"{i.path}: {i.reason}" for i in scan.fatal_issues]
    errs, warns = compare_with_spec(scan, spec, strict_counts=strict_counts)
    counts = {d: sum(c.values()) for d, c in scan.counts().items()}
    return errors + errs, warns, counts


def _bullets(items: list[str], limit: int = 20) -> str:
    shown = "\n".join(f"  - {m}" for m in items[:limit])
    return shown + (f"\n  ... and {len(items) - limit} more" if len(items) > limit else "")


def run_download(spec: DatasetSpec, root: str | Path, sources: dict[str, Source], build: Build, *,
                 fetch: dl.Fetch | None = None, progress: bool = True, keep_archives: bool = False,
                 strict_counts: bool = False) -> Path:
    """Fetch ``sources``, ``build`` the dataset in a staging folder, check it, move it into place.

    Idempotent: a folder with the completion marker is returned untouched, and an
    existing folder without one (e.g. made by DomainBed's own script) is adopted
    if it has the right structure. Archives are kept in ``ROOT/.downloads`` until
    the dataset is complete, so a failed run resumes without fetching again.
    """
    root = Path(root).expanduser()
    final = root / spec.subdir
    fetch = fetch or dl.default_fetch  # looked up at call time so it can be replaced
    with dl.dataset_lock(root, spec.subdir):
        if final.is_dir() and dl.read_marker(final) is not None:
            _say(f"{spec.name} is already complete in {final}; nothing to do", progress)
            return final
        if final.exists():
            errors, warnings, counts = _validate(final, spec, strict_counts)
            if errors:
                raise DownloadError(
                    f"{final} exists but is not a complete {spec.name} dataset:\n{_bullets(errors)}\n"
                    f"Move it away (or delete it) and run `vl2v data download {spec.name} --root {root}` again."
                )
            dl.write_marker(final, _marker(spec, sources, counts, warnings, adopted=True))
            _say(f"{spec.name}: adopted the existing folder {final}", progress)
            return final

        cache = root / dl.DOWNLOADS_DIRNAME
        archives: dict[str, Path] = {}
        for key, src in sources.items():
            _say(f"{spec.name}: fetching {src.filename} from {src.url}", progress)
            archives[key] = dl.fetch_source(src, cache, fetch)

        staging = dl.fresh_staging(root, spec.subdir)
        _say(f"{spec.name}: unpacking into {staging}", progress)
        try:
            built = build(archives, staging, progress)
        except OSError as exc:
            raise DownloadError(
                f"{spec.name}: unpacking into {staging} failed: {exc}. Free some space or fix the "
                "permissions, then run the command again (the archives already fetched are reused)."
            ) from None
        errors, warnings, counts = _validate(built, spec, strict_counts)
        if errors:
            raise DownloadError(
                f"the downloaded {spec.name} does not have the expected layout:\n{_bullets(errors)}\n"
                f"The files may have changed at the source. The archives are kept in {cache} and the "
                f"unpacked files in {staging} for inspection; delete both to start over."
            )
        dl.finalize(built, final, _marker(spec, sources, counts, warnings))
        shutil.rmtree(staging, ignore_errors=True)
        if not keep_archives:
            for path in archives.values():
                path.unlink(missing_ok=True)
            try:
                cache.rmdir()
            except OSError:
                pass
    for w in warnings:
        _say(f"warning: {w}", progress)
    _say(f"{spec.name}: {sum(counts.values())} images in {len(counts)} domains. "
         f"Run `vl2v data check {spec.name} --root {root}` to decode every image.", progress)
    return final


def _marker(spec: DatasetSpec, sources: dict[str, Source], counts: dict[str, int], warnings: list[str],
            adopted: bool = False) -> dict[str, Any]:
    from vl2v import __version__

    return {
        "dataset": spec.name,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "vl2v_version": __version__,
        "adopted_existing_folder": adopted,
        "sources": {k: s.url for k, s in sources.items()} if not adopted else {},
        "images": counts,
        "warnings": warnings,
    }


# --------------------------------------------------------------------------- builders
def _unpack_single(key: str, top: str) -> Build:
    """Unpack one archive and take its folder ``top`` as the dataset (DomainBed's rename)."""

    def build(archives: dict[str, Path], staging: Path, progress: bool) -> Path:
        unpacked = staging / "unpacked"
        tops = dl.extract_archive(archives[key], unpacked, progress=progress)
        built = unpacked / top
        if not built.is_dir():
            raise DownloadError(
                f"{archives[key]} has no folder {top!r} (its top-level entries: {', '.join(tops[:10]) or 'none'}). "
                f"The file at the source may have changed: delete {archives[key]} and retry, or report it."
            )
        return built

    return build


def remove_listed_files(folder: Path, lines: list[str], *, progress: bool = True) -> tuple[int, int]:
    """Delete ``folder/<line>`` for each line (DomainBed's duplicate removal); ``(removed, absent)``."""
    from vl2v.utils.progress import progress as _progress

    removed = absent = 0
    for line in _progress(lines, desc="removing duplicates", unit="file", disable=not progress):
        rel = dl.safe_member_path(line.strip())
        if not line.strip() or rel is None or str(rel) == ".":
            continue
        try:
            (folder / rel).unlink()
            removed += 1
        except FileNotFoundError:
            absent += 1
    return removed, absent


def _build_domainnet(archives: dict[str, Path], staging: Path, progress: bool) -> Path:
    built = staging / "domain_net"
    for domain in DOMAINNET_SOURCES:
        dl.extract_archive(archives[domain], built, progress=progress)
        if not (built / domain).is_dir():
            raise DownloadError(f"{archives[domain]} did not unpack to a folder {domain!r}; "
                                f"delete it and retry, or report it if it happens again")
    lines = archives["duplicates"].read_text(encoding="utf-8").splitlines()
    removed, absent = remove_listed_files(built, lines, progress=progress)
    _say(f"DomainNet: removed {removed} duplicate files listed by DomainBed"
         + (f" ({absent} listed files were not present)" if absent else ""), progress)
    return built


def terra_plan(annotation_sets: list[dict[str, Any]]) -> tuple[dict[str, list[str]], set[str]]:
    """Map each needed image file name to its destinations, as DomainBed re-folders TerraIncognita.

    ``annotation_sets`` are COCO-style dicts (``images``, ``annotations``,
    ``categories``), merged as DomainBed merges the ECCV'18 files. An image at one
    of :data:`TERRA_LOCATIONS` goes to ``location_<loc>/<category>/<file_name>``
    for each of its annotations whose category is in :data:`TERRA_CATEGORIES`.
    Returns ``(plan, locations seen)``.
    """
    merged: dict[str, list[Any]] = defaultdict(list)
    for data in annotation_sets:
        for k in ("images", "annotations", "categories"):
            merged[k].extend(data.get(k, []))
    names = {c["id"]: c["name"] for c in merged["categories"]}
    by_image: dict[Any, list[Any]] = defaultdict(list)
    for ann in merged["annotations"]:
        by_image[ann["image_id"]].append(ann["category_id"])
    plan: dict[str, list[str]] = {}
    locations: set[str] = set()
    for image in merged["images"]:
        loc = str(image.get("location"))
        if loc not in TERRA_LOCATIONS:
            continue
        locations.add(loc)
        fname = str(image["file_name"])
        rel = dl.safe_member_path(fname)
        if rel is None or str(rel) == ".":
            raise DownloadError(f"TerraIncognita annotation has an unsafe file name {fname!r}")
        for cat_id in by_image.get(image["id"], []):
            cat = names.get(cat_id)
            if cat not in TERRA_CATEGORIES:
                continue
            dest = f"location_{loc}/{cat}/{rel.as_posix()}"
            dests = plan.setdefault(rel.as_posix(), [])
            if dest not in dests:
                dests.append(dest)
    return plan, locations


def _build_terra(archives: dict[str, Path], staging: Path, progress: bool) -> Path:
    ann_dir = staging / "annotations"
    dl.extract_archive(archives["annotations"], ann_dir, progress=progress)
    files = sorted(ann_dir.rglob("*.json"))
    if not files:
        raise DownloadError(f"{archives['annotations']} contains no .json annotation file; delete it and retry")
    sets = []
    for f in files:
        try:
            sets.append(json.loads(f.read_text(encoding="utf-8")))
        except ValueError as exc:
            raise DownloadError(f"annotation file {f.name} in {archives['annotations']} is not valid JSON ({exc}); "
                                "delete the archive and retry") from None
    plan, locations = terra_plan(sets)
    built = staging / "terra_incognita"
    for loc in sorted(locations):
        (built / f"location_{loc}").mkdir(parents=True, exist_ok=True)
    found: set[str] = set()
    for rel, fh in dl.iter_tar_files(archives["images"], progress=progress):
        if len(rel.parts) < 2 or rel.parts[0] != TERRA_IMAGES_DIR:
            continue
        key = "/".join(rel.parts[1:])
        dests = plan.get(key)
        if not dests or key in found:
            continue
        first = built / dests[0]
        first.parent.mkdir(parents=True, exist_ok=True)
        with open(first, "wb") as out:
            shutil.copyfileobj(fh, out, 1 << 20)
        for other in dests[1:]:
            target = built / other
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(first, target)
        found.add(key)
    missing = sorted(set(plan) - found)
    if missing:
        raise DownloadError(
            f"{len(missing)} annotated TerraIncognita images are not in {archives['images']} "
            f"(e.g. {', '.join(missing[:3])}); the archive is probably truncated: delete it and retry"
        )
    shutil.rmtree(ann_dir)
    return built


# --------------------------------------------------------------------------- downloaders
def _downloader(get_spec: Callable[[], DatasetSpec], sources: Callable[[], dict[str, Source]], build: Build):
    def download(root: str | Path, *, fetch: dl.Fetch | None = None, progress: bool = True,
                 keep_archives: bool = False, strict_counts: bool = False,
                 spec: DatasetSpec | None = None) -> Path:
        return run_download(spec or get_spec(), root, sources(), build, fetch=fetch, progress=progress,
                            keep_archives=keep_archives, strict_counts=strict_counts)

    return download


download_vlcs = _downloader(lambda: VLCS, lambda: {"archive": VLCS_SOURCE}, _unpack_single("archive", "VLCS"))
download_pacs = _downloader(lambda: PACS, lambda: {"archive": PACS_SOURCE}, _unpack_single("archive", "kfold"))
download_office_home = _downloader(lambda: OFFICEHOME, lambda: {"archive": OFFICEHOME_SOURCE},
                                   _unpack_single("archive", "OfficeHomeDataset_10072016"))
download_terra_incognita = _downloader(lambda: TERRAINCOGNITA, lambda: dict(TERRA_SOURCES), _build_terra)
download_domain_net = _downloader(lambda: DOMAINNET,
                                  lambda: {**DOMAINNET_SOURCES, "duplicates": DOMAINNET_DUPLICATES},
                                  _build_domainnet)
for _f, _n in ((download_vlcs, "VLCS"), (download_pacs, "PACS"), (download_office_home, "OfficeHome"),
               (download_terra_incognita, "TerraIncognita"), (download_domain_net, "DomainNet")):
    _f.__name__ = _f.__qualname__ = f"download_{_n.lower()}"
    _f.__doc__ = (f"Download {_n} into ``root`` as DomainBed does; return the dataset folder.\n\n"
                  "``fetch(url, dest)`` replaces the network; ``spec`` replaces the registered spec (tests).")


# --------------------------------------------------------------------------- registry
# Image counts per domain after DomainBed's post-processing; sources in docs/datasets.md.
VLCS = register_dataset(DatasetSpec(
    name="VLCS",
    domains=("Caltech101", "LabelMe", "SUN09", "VOC2007"),
    num_classes=5,
    subdir="VLCS",
    description="Photos from four datasets (Caltech101, LabelMe, SUN09, PASCAL VOC 2007); 5 classes.",
    expected_images={"Caltech101": 1415, "LabelMe": 2656, "SUN09": 3282, "VOC2007": 3376},
    downloader=download_vlcs,
    steps=5001,
    checkpoint_freq=300,
    extra={"classes": ("bird", "car", "chair", "dog", "person"), "domainbed_envs": ("C", "L", "S", "V")},
))

PACS = register_dataset(DatasetSpec(
    name="PACS",
    domains=("art_painting", "cartoon", "photo", "sketch"),
    num_classes=7,
    subdir="PACS",
    description="Photo, art painting, cartoon and sketch images of 7 classes.",
    expected_images={"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929},
    downloader=download_pacs,
    steps=5001,
    checkpoint_freq=300,
    extra={"classes": ("dog", "elephant", "giraffe", "guitar", "horse", "house", "person"),
           "domainbed_envs": ("A", "C", "P", "S")},
))

OFFICEHOME = register_dataset(DatasetSpec(
    name="OfficeHome",
    domains=("Art", "Clipart", "Product", "Real World"),
    num_classes=65,
    subdir="office_home",
    description="Office and home objects as art, clipart, product and real-world photos; 65 classes.",
    expected_images={"Art": 2427, "Clipart": 4365, "Product": 4439, "Real World": 4357},
    downloader=download_office_home,
    steps=5001,
    checkpoint_freq=300,
    extra={"classes": OFFICEHOME_CLASSES, "domainbed_envs": ("A", "C", "P", "R")},
))

TERRAINCOGNITA = register_dataset(DatasetSpec(
    name="TerraIncognita",
    domains=("location_100", "location_38", "location_43", "location_46"),
    num_classes=10,
    subdir="terra_incognita",
    description="Camera-trap photos from four locations (Caltech Camera Traps); 10 classes.",
    expected_images={"location_100": 4879, "location_38": 9767, "location_43": 4020, "location_46": 6122},
    downloader=download_terra_incognita,
    steps=5001,
    checkpoint_freq=300,
    extra={"classes": TERRA_CATEGORIES, "domainbed_envs": ("L100", "L38", "L43", "L46")},
))

DOMAINNET = register_dataset(DatasetSpec(
    name="DomainNet",
    domains=("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
    num_classes=345,
    subdir="domain_net",
    description="Six domains of 345 classes (DomainNet, cleaned as DomainBed does).",
    expected_images={"clipart": 48129, "infograph": 51605, "painting": 72266, "quickdraw": 172500,
                     "real": 172947, "sketch": 69128},
    downloader=download_domain_net,
    steps=15001,
    checkpoint_freq=1000,
    extra={"domainbed_envs": ("clip", "info", "paint", "quick", "real", "sketch")},
))
