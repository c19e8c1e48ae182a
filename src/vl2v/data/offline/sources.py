"""Turn unpacked packages into labelled candidates (one per future image).

A :class:`Candidate` says where the picture comes from (package, file inside
it), how to draw it (raster bytes, SVG, a font glyph) and which (domain,
class) the rules give it. Nothing is rendered here.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vl2v.data.offline.iconify import IconSet
from vl2v.data.offline.labels import CurationEntry, Decision, apply_curation, classify_file, classify_named, emoji_class
from vl2v.data.offline.rcc import RccReader

SOURCE_PREFIX = {"tuxpaint": "tuxpaint", "openclipart": "ocal", "gcompris": "gcompris"}


@dataclass
class Candidate:
    id: str
    domain: str
    cls: str
    pkg: str  # pin key
    member: str  # file inside the package ('bundle.rcc:path' for rcc entries)
    kind: str  # 'raster' | 'svg' | 'glyph'
    path: str | None = None  # file on disk (raster/svg/font)
    data: bytes | None = None  # in-memory bytes (rcc entries, Iconify SVG)
    text: str | None = None  # glyph text
    source_sha256: str = ""
    reason: str = ""
    credit: str = ""  # per-file credit, where the package has one
    concept: str = ""

    def source_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.kind == "glyph":  # the font's bytes are pinned with its package
            return f"{self.member}|{self.text}".encode()
        assert self.path is not None
        return Path(self.path).read_bytes()


@dataclass
class Skipped:
    pkg: str
    member: str
    reason: str
    id: str = ""


@dataclass
class Collection:
    candidates: list[Candidate] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def extend(self, other: "Collection") -> None:
        self.candidates.extend(other.candidates)
        self.skipped.extend(other.skipped)


def slug(s: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", s).strip("-").lower()
    return s or "x"


def unique_ids(prefix: str, rel_paths: list[str]) -> dict[str, str]:
    """Short readable ids (prefix-stem), lengthened with parent folders only where stems collide."""
    def make(rel: str, depth: int) -> str:
        parts = rel.rsplit(".", 1)[0].split("/")
        return f"{prefix}-" + slug("-".join(parts[-depth:]))

    out: dict[str, str] = {}
    pending = sorted(set(rel_paths))
    depth = 1
    while pending:
        ids: dict[str, list[str]] = {}
        for rel in pending:
            ids.setdefault(make(rel, depth), []).append(rel)
        pending = []
        for ident, rels in ids.items():
            if len(rels) == 1 and ident not in out.values():
                out[rels[0]] = ident
            else:
                pending.extend(rels)
        depth += 1
        if depth > 12:  # identical full paths cannot happen; hash as a last resort
            for rel in pending:
                out[rel] = f"{make(rel, 1)}-{hashlib.sha1(rel.encode()).hexdigest()[:6]}"
            break
    return out


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _decide(curation: dict[str, CurationEntry], ident: str, dec: Decision) -> Decision:
    return apply_curation(curation, ident, dec)


# --------------------------------------------------------------------- folder sources
def collect_folder_source(key: str, root: Path, rules: dict[str, Any],
                          curation: dict[str, CurationEntry]) -> Collection:
    """Tux Paint stamps and OpenClipart: walk the files and apply the folder rules."""
    src = rules["sources"][key]
    base = root / src["root"]
    exts = tuple(e.lower() for e in src["ext"])
    rels = sorted(p.relative_to(base).as_posix() for p in base.rglob("*")
                  if p.is_file() and p.suffix.lower() in exts)
    ids = unique_ids(SOURCE_PREFIX.get(key, key), rels)
    out = Collection()
    kind = "svg" if exts == (".svg",) else "raster"
    for rel in rels:
        member = f"{src['root']}/{rel}"
        dec = _decide(curation, ids[rel], classify_file(rules, src, rel))
        if dec.cls is None:
            if not dec.reason.startswith(("no folder rule", "folder ", "in a skipped")):
                out.skipped.append(Skipped(key, member, dec.reason, ids[rel]))
            continue
        path = base / rel
        out.candidates.append(Candidate(
            id=ids[rel], domain=src["domain"], cls=dec.cls, pkg=key, member=member, kind=kind,
            path=str(path), source_sha256=_sha(path.read_bytes()), reason=dec.reason,
            concept=Path(rel).stem))
    return out


# --------------------------------------------------------------------- GCompris
def parse_gcompris_readme(text: str) -> dict[str, dict[str, str]]:
    """GCompris resource READMEs: blocks of 'Copyright:/License:/Source:' then 'Files:' lines."""
    credits: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for line in block.splitlines():
            m = re.match(r"^(Copyright|License|Source|Files):\s*(.*)$", line.strip())
            if m:
                in_files = m.group(1) == "Files"
                if in_files:
                    files.extend(m.group(2).split())
                else:
                    fields[m.group(1).lower()] = m.group(2).strip()
            elif in_files and line.strip():
                files.extend(line.split())
        for f in files:
            credits[f] = fields
    return credits


def _credit_text(c: dict[str, str]) -> str:
    parts = [f"(c) {c['copyright']}" if c.get("copyright") else "", c.get("license", ""),
             c.get("source", "")]
    return "; ".join(p for p in parts if p)


def collect_gcompris(root: Path, rules: dict[str, Any], curation: dict[str, CurationEntry]) -> Collection:
    src = rules["sources"]["gcompris"]
    out = Collection()
    rcc_dir = "usr/share/gcompris-qt/rcc"
    for entry in src["entries"]:
        reader = RccReader.open(root / rcc_dir / entry["rcc"])
        folder = entry["folder"].rstrip("/") + "/"
        names = [p for p in reader if p.startswith(folder) and "/" not in p[len(folder):]]
        readme = folder + "README"
        credits = parse_gcompris_readme(reader.read(readme).decode("utf-8", "replace")) if readme in names else {}
        files = sorted(p for p in names if p.lower().endswith(entry["ext"]))
        for p in files:
            stem = p[len(folder):].rsplit(".", 1)[0]
            ident = f"gcompris-{slug(stem)}"
            member = f"{rcc_dir}/{entry['rcc']}:{p}"
            dec = _decide(curation, ident, classify_named(rules, src, entry["class"], entry["folder"], stem))
            if dec.cls is None:
                out.skipped.append(Skipped("gcompris", member, dec.reason, ident))
                continue
            data = reader.read(p)
            name = p.rsplit("/", 1)[-1]
            out.candidates.append(Candidate(
                id=ident, domain=entry["domain"], cls=dec.cls, pkg="gcompris", member=member,
                kind="svg" if entry["ext"] == ".svg" else "raster", data=data, source_sha256=_sha(data),
                reason=dec.reason, credit=_credit_text(credits.get(name, {})), concept=stem))
    return out


# --------------------------------------------------------------------- emoji
@dataclass(frozen=True)
class EmojiInfo:
    unified: str  # upper-case hex, '-'-joined, as in emoji.json
    non_qualified: str | None
    short_name: str
    subgroup: str
    sort_order: int

    def code_strings(self) -> list[str]:
        """Ways a vendor may name the file: fully qualified, non-qualified, without FE0F."""
        out = [self.unified]
        if self.non_qualified:
            out.append(self.non_qualified)
        out.append("-".join(p for p in self.unified.split("-") if p != "FE0F"))
        seen: list[str] = []
        for s in out:
            if s not in seen:
                seen.append(s)
        return seen


def load_emoji_table(emoji_json: Path) -> list[EmojiInfo]:
    rows = json.loads(Path(emoji_json).read_text("utf-8"))
    out = [EmojiInfo(r["unified"].upper(), (r.get("non_qualified") or None) and r["non_qualified"].upper(),
                     r.get("short_name") or slug(r.get("name", r["unified"])), r.get("subcategory", ""),
                     int(r.get("sort_order", 0))) for r in rows]
    return sorted(out, key=lambda e: (e.sort_order, e.unified))


def _glyph_checker(font_path: str):
    from vl2v.data.offline.imaging import glyph_mask_bytes

    notdef = glyph_mask_bytes(font_path, "\U0010FFFD")
    empty = glyph_mask_bytes(font_path, " ")

    def has(text: str) -> bool:
        m = glyph_mask_bytes(font_path, text)
        return m != notdef and m != empty
    return has


def collect_emoji(roots: dict[str, Path], rules: dict[str, Any], curation: dict[str, CurationEntry]) -> Collection:
    out = Collection()
    table = load_emoji_table(roots["emojidata"] / "package" / "emoji.json")
    chosen: list[tuple[EmojiInfo, str, str]] = []  # (emoji, class, reason)
    for e in table:
        dec = emoji_class(rules, e.unified, e.subgroup)
        if dec.cls is None:
            if not dec.reason.endswith("not used"):
                out.skipped.append(Skipped("emojidata", e.unified, dec.reason, e.short_name))
            continue
        chosen.append((e, dec.cls, dec.reason))

    # Iconify icon names are shared across sets; chars.json of any set maps code points to them.
    names: dict[str, str] = {}
    for key, spec in rules["emoji_sources"].items():
        if key.startswith("_") or spec["kind"] != "iconify" or key not in roots:
            continue
        chars = roots[key] / "package" / "chars.json"
        if chars.is_file():
            for cp, name in json.loads(chars.read_text("utf-8")).items():
                names.setdefault(cp.upper(), name)

    for key, spec in rules["emoji_sources"].items():
        if key.startswith("_") or key not in roots:
            continue
        root = roots[key]
        iconset = IconSet.load(root / "package" / "icons.json") if spec["kind"] == "iconify" else None
        has_glyph = _glyph_checker(str(root / spec["font"])) if spec["kind"] == "glyph" else None
        for e, cls, reason in chosen:
            ident = f"{key}-{slug(e.short_name)}"
            dec = _decide(curation, ident, Decision(cls, reason))
            if dec.cls is None:
                out.skipped.append(Skipped(key, e.unified, dec.reason, ident))
                continue
            cand = Candidate(id=ident, domain=spec["domain"], cls=dec.cls, pkg=key, member="", kind="svg",
                             reason=dec.reason, concept=e.short_name)
            if iconset is not None:
                name = next((names[c] for c in e.code_strings() if c in names and names[c] in iconset), None)
                if name is None:
                    out.skipped.append(Skipped(key, e.unified, "not in this icon set", ident))
                    continue
                svg = iconset.svg(name).encode("utf-8")
                cand.member, cand.data = f"package/icons.json#{name}", svg
            elif spec["kind"] == "files":
                folder = root / spec["folder"]
                path = None
                for c in e.code_strings():
                    f = folder / spec["pattern"].format(lower=c.lower(), upper=c.upper())
                    if f.is_file():
                        path = f
                        break
                if path is None:
                    out.skipped.append(Skipped(key, e.unified, "no file for this code point", ident))
                    continue
                cand.member = f"{spec['folder']}/{path.name}"
                cand.path = str(path)
                cand.kind = "svg" if path.suffix.lower() == ".svg" else "raster"
            else:  # glyph
                cps = [p for p in e.unified.split("-") if p != "FE0F"]
                text = "".join(chr(int(p, 16)) for p in cps)
                if len(cps) != 1 or not has_glyph(text):
                    out.skipped.append(Skipped(key, e.unified, "no single glyph in the font", ident))
                    continue
                cand.kind, cand.path, cand.text = "glyph", str(root / spec["font"]), text
                cand.member = f"{spec['font']}#U+{cps[0]}"
            cand.source_sha256 = _sha(cand.source_bytes())
            out.candidates.append(cand)
    return out


def collect_all(roots: dict[str, Path], rules: dict[str, Any], curation: dict[str, CurationEntry]) -> Collection:
    out = Collection()
    for key in ("tuxpaint", "openclipart"):
        if key in roots:
            out.extend(collect_folder_source(key, roots[key], rules, curation))
    if "gcompris" in roots:
        out.extend(collect_gcompris(roots["gcompris"], rules, curation))
    if "emojidata" in roots:
        out.extend(collect_emoji(roots, rules, curation))
    return out
