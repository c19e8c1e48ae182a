"""Build OfflinePACS: fetch, unpack, label, render, preprocess, write, attribute.

Output (``dest``): ``<domain>/<class>/<id>.png`` plus ``manifest.jsonl``,
``ATTRIBUTION.md`` and ``build_info.json``. The dataset is assembled in a
hidden sibling folder and renamed into place, so an interrupted build never
leaves a half dataset that looks complete. Contact sheets (one per domain and
class) go to ``<dest>_contact_sheets`` beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from vl2v.utils.hashing import sha256_bytes
from vl2v.utils.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_jsonl, vl2v_home

BUILDER_VERSION = 1
RENDER_VERSION = 1  # bump when rendering or preprocessing changes: cached renders are then redone
DOMAINS = ("clipart", "emoji", "photo", "sketch")
NEAR_DUPLICATE_BITS = 4  # dHash distance (of 64 bits) reported as a possible near-duplicate


@dataclass
class Rendered:
    id: str
    png: bytes | None
    error: str = ""
    dhash: int = 0


def _progress(iterable: Iterable, **kw: Any) -> Iterable:
    from vl2v.utils.progress import progress

    return progress(iterable, leave=True, **kw)


# --------------------------------------------------------------------- rendering
def render_candidate(args: tuple[Any, int]) -> Rendered:
    """Draw one candidate and preprocess it (runs in a worker process)."""
    from vl2v.data.offline import imaging as im

    cand, size = args
    try:
        if cand.kind == "raster":
            img = im.load_raster(cand.source_bytes())
            out = im.prepare(img, size)
        elif cand.kind == "svg":
            data = cand.source_bytes()
            longest = 2 * size
            img = im.render_svg(data, longest)
            out = im.prepare(img, size)
            box = max(out.box[2] - out.box[0], out.box[3] - out.box[1])
            if box < 2 * size:  # small drawing on a big page: render again, larger
                canvas = max(img.size)
                longest = min(4096, int(longest * (2 * size) / max(box, 1)) + 1)
                if longest > canvas:
                    out = im.prepare(im.render_svg(data, longest), size)
        elif cand.kind == "glyph":
            out = im.prepare(im.draw_glyph(cand.path, cand.text, px=max(384, 2 * size)), size)
        else:
            raise ValueError(f"unknown kind {cand.kind}")
        return Rendered(cand.id, im.encode_png(out.image), dhash=im.dhash(out.image))
    except Exception as exc:  # one bad file must not stop the build; it is reported
        return Rendered(cand.id, None, error=f"{type(exc).__name__}: {exc}"[:300])


def _render_key(cand: Any, size: int) -> str:
    blob = json.dumps([RENDER_VERSION, cand.kind, cand.source_sha256, cand.text, size]).encode()
    return hashlib.sha256(blob).hexdigest()


def render_all(cands: list, size: int, workers: int, cache_dir: Path | None = None) -> list[Rendered]:
    """Render every candidate, reusing earlier renders of the same bytes kept in ``cache_dir``."""
    from vl2v.data.offline import imaging as im

    out: list[Rendered | None] = [None] * len(cands)
    todo = []
    for i, c in enumerate(cands):
        f = cache_dir / _render_key(c, size)[:2] / f"{_render_key(c, size)}.png" if cache_dir else None
        if f is not None and f.is_file():
            png = f.read_bytes()
            import io

            from PIL import Image
            out[i] = Rendered(c.id, png, dhash=im.dhash(Image.open(io.BytesIO(png))))
        else:
            todo.append(i)
    jobs = [(cands[i], size) for i in todo]
    if jobs:
        if workers <= 1:
            results = [render_candidate(j) for j in _progress(jobs, desc="rendering", unit="img")]
        else:
            with ProcessPoolExecutor(max_workers=workers) as ex:
                results = list(_progress(ex.map(render_candidate, jobs, chunksize=4), total=len(jobs),
                                         desc="rendering", unit="img"))
        for i, r in zip(todo, results):
            out[i] = r
            if cache_dir is not None and r.png is not None:
                key = _render_key(cands[i], size)
                atomic_write_bytes(cache_dir / key[:2] / f"{key}.png", r.png)
    return [r for r in out if r is not None]


# --------------------------------------------------------------------- helpers
def fingerprint(pins: list, rules: dict, curation: dict, image_size: int) -> str:
    blob = json.dumps({
        "builder": BUILDER_VERSION,
        "render": RENDER_VERSION,
        "pins": [(p.name, p.version, p.sha256) for p in pins],
        "rules": rules,
        "curation": sorted((c.id, c.action) for c in curation.values()),
        "image_size": image_size,
    }, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def is_complete(dest: Path, fp: str) -> bool:
    info, manifest = dest / "build_info.json", dest / "manifest.jsonl"
    if not (info.is_file() and manifest.is_file()):
        return False
    try:
        meta = json.loads(info.read_text("utf-8"))
    except ValueError:
        return False
    if meta.get("fingerprint") != fp:
        return False
    rows = read_jsonl(manifest)
    return len(rows) == meta.get("images") and all((dest / r["path"]).is_file() for r in rows)


def counts_table(counts: dict[tuple[str, str], int], classes: list[str], domains=DOMAINS) -> str:
    w = max(len(c) for c in classes + ["class", "total"])
    head = f"{'class':<{w}} " + " ".join(f"{d:>8}" for d in domains) + f" {'total':>8}"
    lines = [head, "-" * len(head)]
    for c in classes:
        row = [counts.get((d, c), 0) for d in domains]
        lines.append(f"{c:<{w}} " + " ".join(f"{n:>8}" for n in row) + f" {sum(row):>8}")
    tot = [sum(counts.get((d, c), 0) for c in classes) for d in domains]
    lines.append("-" * len(head))
    lines.append(f"{'total':<{w}} " + " ".join(f"{n:>8}" for n in tot) + f" {sum(tot):>8}")
    return "\n".join(lines)


def _hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


# --------------------------------------------------------------------- attribution
def attribution_markdown(pins: list, rows: list[dict], cands_by_id: dict) -> str:
    used = Counter(r["package"] for r in rows)
    lines = ["# OfflinePACS: attribution", "",
             "Images of this dataset were rendered from the packages below (pinned versions). They keep",
             "their licences: redistribute them only under those terms. Per-image package, file and",
             "licence are in manifest.jsonl.", "",
             "| package | version | licence | images | credit |", "|---|---|---|---|---|"]
    for p in pins:
        lines.append(f"| {p.name} | {p.version} | {p.licence} | {used.get(p.name, 0)} | {p.credit} |")
    gc = [r for r in rows if cands_by_id[r["id"]].credit]
    if gc:
        lines += ["", "## Per-file credits (from the packages' own credit files)", ""]
        for r in gc:
            c = cands_by_id[r["id"]]
            lines.append(f"- `{r['path']}` ({c.member.rsplit('/', 1)[-1]}): {c.credit}")
    lines += ["", "Emoji labels come from emoji-datasource (emoji.json subcategories); no images of that",
              "package are used.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------- contact sheets
def write_contact_sheets(dest: Path, rows: list[dict], out_dir: Path, classes: list[str],
                         thumb: int = 112, cols: int = 10, per_page: int = 100) -> list[Path]:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # pragma: no cover - old Pillow
        font = ImageFont.load_default()
    by_cell: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        by_cell[(r["domain"], r["class"])].append(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    written = []
    label_h = 14
    for d in DOMAINS:
        for c in classes:
            items = by_cell.get((d, c), [])
            pages = max(1, (len(items) + per_page - 1) // per_page)
            for page in range(pages):
                chunk = items[page * per_page:(page + 1) * per_page]
                nrows = max(1, (len(chunk) + cols - 1) // cols)
                sheet = Image.new("RGB", (cols * (thumb + 4) + 4, 24 + nrows * (thumb + label_h + 4)), (200, 200, 200))
                draw = ImageDraw.Draw(sheet)
                draw.text((4, 4), f"{d} / {c}: {len(items)} images (page {page + 1}/{pages})", fill=(0, 0, 0), font=font)
                for i, r in enumerate(chunk):
                    x, y = 4 + (i % cols) * (thumb + 4), 24 + (i // cols) * (thumb + label_h + 4)
                    with Image.open(dest / r["path"]) as im:
                        sheet.paste(im.convert("RGB").resize((thumb, thumb), Image.Resampling.BILINEAR), (x, y))
                    name = r["id"]
                    while font.getlength(name) > thumb and len(name) > 4:
                        name = name[:-1]
                    draw.text((x, y + thumb + 1), name, fill=(0, 0, 0), font=font)
                f = out_dir / f"{d}_{c}_{page + 1}.png"
                sheet.save(f)
                written.append(f)
    return written


# --------------------------------------------------------------------- the build
def build_offline_pacs(dest: Path, *, cache_dir: Path | None = None, image_size: int = 224, force: bool = False,
                       pins: list | None = None, rules: dict | None = None, curation: dict | None = None,
                       workers: int | None = None, contact_sheets: bool = True) -> dict[str, Any]:
    """Build the OfflinePACS benchmark into ``dest``; return a summary (``text`` for people)."""
    from vl2v.data.offline import fetch, labels

    t0 = time.monotonic()
    dest = Path(dest).expanduser()
    pins = pins if pins is not None else fetch.load_pins()
    rules = rules if rules is not None else labels.load_rules()
    curation = curation if curation is not None else labels.load_curation(classes=rules["classes"])
    classes = list(rules["classes"])
    fp = fingerprint(pins, rules, curation, image_size)
    if not force and is_complete(dest, fp):
        return _already_built(dest, classes)

    cache = fetch.PackageCache(Path(cache_dir) if cache_dir else vl2v_home() / "packages")
    archives = fetch.fetch_packages(pins, cache, progress=lambda it: _progress(it, desc="fetching", unit="pkg"))
    t_fetch = time.monotonic() - t0
    roots = {p.key: fetch.extract_package(p, archives[p.key], cache)
             for p in _progress(pins, desc="unpacking", unit="pkg")}
    unique, skipped, unused_curation = _select_candidates(roots, rules, curation)
    n_workers = workers if workers is not None else max(1, min(4, os.cpu_count() or 1))
    rendered = render_all(unique, image_size, n_workers, cache.root / "rendered")

    tmp = dest.parent / f".{dest.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rows, hashes = _write_images(tmp, unique, rendered, {p.key: p for p in pins}, skipped)
        _check_and_make_cells(tmp, rows, classes)
        manifest = _write_manifest(tmp, rows, pins, {c.id: c for c in unique})
        counts = Counter((r["domain"], r["class"]) for r in rows)
        near = _near_duplicates(hashes)
        seconds = {"fetch": round(t_fetch, 1), "total": round(time.monotonic() - t0, 1)}
        atomic_write_json(tmp / "build_info.json", _build_info(fp, image_size, rows, manifest, counts, classes, pins,
                                                               cache, skipped, near, unused_curation, seconds))
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    sheets_dir = dest.parent / f"{dest.name}_contact_sheets"
    if contact_sheets:
        write_contact_sheets(dest, rows, sheets_dir, classes)
        atomic_write_text(sheets_dir / "near_duplicates.txt", "\n".join(near) + "\n")
    t_total = time.monotonic() - t0
    text = _summary_text(dest, len(rows), image_size, classes, counts, skipped, unused_curation, near,
                         sheets_dir if contact_sheets else None, t_total, t_fetch)
    return {"text": text, "dest": str(dest), "images": len(rows), "counts": dict(counts), "seconds": t_total,
            "skipped": skipped}


def _already_built(dest: Path, classes: list[str]) -> dict[str, Any]:
    """The summary of a complete build already in ``dest`` (same fingerprint): nothing is done."""
    meta = json.loads((dest / "build_info.json").read_text("utf-8"))
    counts = {tuple(k.split("/", 1)): n for k, n in meta["counts"].items()}
    text = (f"OfflinePACS is already built in {dest} ({meta['images']} images, same pins, rules and size);"
            f" use --force to rebuild.\n\n" + counts_table(counts, classes))
    return {"text": text, "dest": str(dest), "images": meta["images"], "skipped_build": True}


def _skip(c: Any, reason: str) -> dict[str, str]:
    """A left-out file, as ``build_info.json`` lists it."""
    return dict(package=c.pkg, member=c.member, id=c.id, reason=reason)


def _select_candidates(roots: dict, rules: dict, curation: dict) -> tuple[list, list[dict], list[str]]:
    """The labelled candidates of the unpacked packages, one per distinct source file of a domain, with the
    curation applied; returns them (sorted), the files left out (and why), and the curation entries that
    matched no file."""
    from vl2v.data.offline import labels, sources

    # Curation applies after de-duplication, to the copy that is kept (the first in sorted order),
    # so an excluded picture cannot come back through another copy of the same file.
    col = sources.collect_all(roots, rules, {})
    cands = col.candidates
    skipped = [dict(package=s.pkg, member=s.member, id=s.id, reason=s.reason) for s in col.skipped]

    # Exact duplicates of the source bytes within a domain: keep the first in sorted order.
    cands.sort(key=lambda c: (c.domain, c.pkg, c.member, c.id))
    seen_src: dict[tuple[str, str], str] = {}
    unique = []
    for c in cands:
        k = (c.domain, c.source_sha256)
        if k in seen_src:
            skipped.append(_skip(c, f"same bytes as {seen_src[k]}"))
            continue
        seen_src[k] = c.id
        dec = labels.apply_curation(curation, c.id, labels.Decision(c.cls, c.reason))
        if dec.cls is None:
            skipped.append(_skip(c, dec.reason))
            continue
        c.cls, c.reason = dec.cls, dec.reason
        unique.append(c)
    seen_ids = set(seen_src.values()) | {s.id for s in col.skipped}
    unused_curation = sorted(set(curation) - seen_ids)
    ids = Counter(c.id for c in unique)
    dup_ids = [i for i, n in ids.items() if n > 1]
    if dup_ids:
        raise RuntimeError(f"image ids are not unique: {dup_ids[:5]}")
    return unique, skipped, unused_curation


def _write_images(tmp: Path, unique: list, rendered: list[Rendered], pin_of: dict,
                  skipped: list[dict]) -> tuple[list[dict], dict[tuple[str, str], list[tuple[str, int]]]]:
    """Write each rendered image to ``tmp/<domain>/<class>/<id>.png`` (a failed render, or one identical to an
    earlier one of its domain, is added to ``skipped`` instead); returns the manifest rows (sorted by path)
    and each (domain, class) cell's (id, dHash) pairs."""
    rows: list[dict] = []
    seen_out: dict[tuple[str, str], str] = {}
    hashes: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for c, r in zip(unique, rendered):
        if r.png is None:
            skipped.append(_skip(c, f"render failed: {r.error}"))
            continue
        digest = sha256_bytes(r.png)
        if (c.domain, digest) in seen_out:
            skipped.append(_skip(c, f"renders identically to {seen_out[(c.domain, digest)]}"))
            continue
        seen_out[(c.domain, digest)] = c.id
        rel = f"{c.domain}/{c.cls}/{c.id}.png"
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(r.png)
        pin = pin_of[c.pkg]
        rows.append({"path": rel, "domain": c.domain, "class": c.cls, "id": c.id,
                     "package": pin.name, "version": pin.version, "file": c.member,
                     "licence": pin.licence, "sha256": digest, "rule": c.reason})
        hashes[(c.domain, c.cls)].append((c.id, r.dhash))
    rows.sort(key=lambda r: r["path"])
    return rows, hashes


def _check_and_make_cells(tmp: Path, rows: list[dict], classes: list[str]) -> None:
    """Refuse a build with an empty (domain, class) cell, and make every class folder."""
    missing_cells = [f"{d}/{k}" for d in DOMAINS for k in classes if not any(
        r["domain"] == d and r["class"] == k for r in rows)]
    if missing_cells:
        raise RuntimeError(f"no images for {', '.join(missing_cells)}: check the rules and the packages")
    for d in DOMAINS:  # an empty class folder would still make the scanner happy; make them all
        for k in classes:
            (tmp / d / k).mkdir(parents=True, exist_ok=True)


def _write_manifest(tmp: Path, rows: list[dict], pins: list, cands_by_id: dict) -> str:
    """Write ``manifest.jsonl`` and ``ATTRIBUTION.md``; returns the manifest's text."""
    manifest = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    atomic_write_text(tmp / "manifest.jsonl", manifest)
    atomic_write_text(tmp / "ATTRIBUTION.md", attribution_markdown(pins, rows, cands_by_id))
    return manifest


def _near_duplicates(hashes: dict[tuple[str, str], list[tuple[str, int]]]) -> list[str]:
    """``domain/class: id ~ id`` for each pair of a cell within NEAR_DUPLICATE_BITS of each other (dHash)."""
    near = []
    for cell, hs in sorted(hashes.items()):
        for i in range(len(hs)):
            for j in range(i + 1, len(hs)):
                if _hamming(hs[i][1], hs[j][1]) <= NEAR_DUPLICATE_BITS:
                    near.append(f"{cell[0]}/{cell[1]}: {hs[i][0]} ~ {hs[j][0]}")
    return near


def _build_info(fp: str, image_size: int, rows: list[dict], manifest: str, counts: Counter, classes: list[str],
                pins: list, cache: Any, skipped: list[dict], near: list[str], unused_curation: list[str],
                seconds: dict[str, float]) -> dict[str, Any]:
    """``build_info.json``: what was built from what (fingerprint, packages), counts, and what was left out."""
    return {
        "dataset": "OfflinePACS", "builder_version": BUILDER_VERSION, "fingerprint": fp,
        "image_size": image_size, "images": len(rows),
        "manifest_sha256": sha256_bytes(manifest.encode("utf-8")),
        "counts": {f"{d}/{k}": counts.get((d, k), 0) for d in DOMAINS for k in classes},
        "packages": [{"name": p.name, "version": p.version, "sha256": cache.expected_sha256(p),
                      "licence": p.licence} for p in pins],
        "skipped": sorted(skipped, key=lambda s: (s["package"], s["member"], s["id"])),
        "possible_near_duplicates": near,
        "unused_curation_entries": unused_curation,
        "seconds": seconds,
    }


def _swap_into_place(tmp: Path, dest: Path) -> None:
    """Rename the assembled ``tmp`` to ``dest``: the old build (if any) is moved aside first, removed after."""
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.old-{os.getpid()}"
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _summary_text(dest: Path, images: int, image_size: int, classes: list[str], counts: Counter,
                  skipped: list[dict], unused_curation: list[str], near: list[str], sheets_dir: Path | None,
                  t_total: float, t_fetch: float) -> str:
    """The build's summary for people (``sheets_dir``: where contact sheets were written, None for none)."""
    reasons = Counter(s["reason"].split(":")[0].split("'")[0].strip() for s in skipped)
    return "\n".join([
        f"OfflinePACS built in {dest}: {images} images, {image_size}x{image_size} PNG, "
        f"{len(classes)} classes x {len(DOMAINS)} domains.",
        "",
        counts_table(counts, classes),
        "",
        f"skipped {len(skipped)} files (" + ", ".join(f"{k}: {n}" for k, n in reasons.most_common(6)) + "); "
        "details in build_info.json",
        (f"curation entries that match no file: {', '.join(unused_curation)}\n" if unused_curation else "")
        + f"possible near-duplicates to look at: {len(near)}" + (f" (list in {sheets_dir}/near_duplicates.txt)" if sheets_dir else ""),
        (f"contact sheets: {sheets_dir}" if sheets_dir else ""),
        f"build time: {t_total:.1f} s (fetch {t_fetch:.1f} s)",
    ])
