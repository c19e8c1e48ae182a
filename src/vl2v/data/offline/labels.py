"""Labelling rules: emoji subgroups, folder rules, concept words, negatives, curation.

Everything here reads data files shipped in the package (``rules.json`` and
the hand-checked ``curation.tsv``); no class knowledge lives in code.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

EXCLUDE = "exclude"


class RulesError(ValueError):
    pass


def _read_package_text(name: str) -> str:
    return resources.files("vl2v.data.offline").joinpath(name).read_text("utf-8")


def load_rules(path: str | Path | None = None) -> dict[str, Any]:
    text = Path(path).read_text("utf-8") if path else _read_package_text("rules.json")
    rules = json.loads(text)
    classes = set(rules["classes"])
    for table in (rules["emoji"]["subgroups"], {k: v for k, v in rules.get("overrides", {}).items()
                                                if not k.startswith("_")}):
        bad = {v for v in table.values() if v not in classes}
        if bad:
            raise RulesError(f"rules name unknown classes: {sorted(bad)}")
    return rules


# --------------------------------------------------------------------- curation
@dataclass(frozen=True)
class CurationEntry:
    id: str
    action: str  # "exclude" or a class name (relabel)
    reason: str


def parse_curation(text: str, classes: list[str] | None = None) -> dict[str, CurationEntry]:
    """Parse ``id<TAB>action<TAB>reason`` lines (header and '#' comments allowed)."""
    out: dict[str, CurationEntry] = {}
    rows = csv.reader(io.StringIO(text), delimiter="\t")
    for n, row in enumerate(rows, 1):
        if not row or not row[0].strip() or row[0].startswith("#") or (n == 1 and row[0] == "id"):
            continue
        if len(row) < 2:
            raise RulesError(f"curation line {n}: expected id<TAB>action<TAB>reason, got {row!r}")
        ident, action = row[0].strip(), row[1].strip()
        reason = row[2].strip() if len(row) > 2 else ""
        if classes is not None and action != EXCLUDE and action not in classes:
            raise RulesError(f"curation line {n}: action {action!r} is neither 'exclude' nor a class")
        if ident in out:
            raise RulesError(f"curation line {n}: {ident} listed twice")
        out[ident] = CurationEntry(ident, action, reason)
    return out


def load_curation(path: str | Path | None = None, classes: list[str] | None = None) -> dict[str, CurationEntry]:
    text = Path(path).read_text("utf-8") if path else _read_package_text("curation.tsv")
    return parse_curation(text, classes)


# --------------------------------------------------------------------- words
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])")


def normalise_name(stem: str) -> str:
    """'Strawberry2' -> 'strawberry 2'; 'guitar_electric-bass' -> 'guitar electric bass'."""
    s = _CAMEL.sub(" ", stem).lower()
    s = re.sub(r"[^a-z0-9]+", " ", s)
    s = re.sub(r"(?<=[a-z])(?=[0-9])|(?<=[0-9])(?=[a-z])", " ", s)
    return " " + " ".join(s.split()) + " "


def word_matches(word: str, normalised: str) -> bool:
    """Whole-token match; the word may span tokens ('fire engine') and take a plural s/es."""
    w = " ".join(normalise_name(word).split())
    return re.search(rf" {re.escape(w)}(?:s|es)? ", normalised) is not None


def first_match(words: list[str], normalised: str) -> str | None:
    for w in words:
        if not w.startswith("_") and word_matches(w, normalised):
            return w
    return None


# --------------------------------------------------------------------- decisions
@dataclass(frozen=True)
class Decision:
    cls: str | None
    reason: str  # why (kept: the rule; dropped: what dropped it)


def concept_class(rules: dict[str, Any], normalised: str) -> tuple[str | None, str]:
    """Class from concept words alone; ambiguous names give None."""
    hits = {}
    for cls, words in rules["vocabulary"].items():
        if cls.startswith("_"):
            continue
        w = first_match(words, normalised)
        if w:
            hits[cls] = w
    if len(hits) == 1:
        (cls, w), = hits.items()
        return cls, f"concept word '{w}'"
    if len(hits) > 1:
        return None, "ambiguous concept words " + ", ".join(f"{w}->{c}" for c, w in sorted(hits.items()))
    return None, "no concept word"


def folder_rule(folders: dict[str, Any], rel_dir: str) -> tuple[str | None, str | None]:
    """Longest folder prefix with a rule: returns (rule value, folder)."""
    parts = [p for p in rel_dir.split("/") if p]
    for n in range(len(parts), 0, -1):
        key = "/".join(parts[:n])
        if key in folders:
            return folders[key], key
    return None, None


def classify_file(rules: dict[str, Any], source: dict[str, Any], rel_path: str) -> Decision:
    """Class of a file from folder rules, negatives, overrides and required keywords."""
    rel_dir, _, name = rel_path.rpartition("/")
    stem = name.rsplit(".", 1)[0]
    norm = normalise_name(stem)
    skip = set(source.get("skip_dirs", []))
    if any(p in skip for p in rel_dir.split("/")):
        return Decision(None, f"in a skipped folder ({', '.join(sorted(skip))})")
    rule, folder = folder_rule(source.get("folders", {}), rel_dir)
    if rule is None:
        return Decision(None, "no folder rule" if folder is None else f"folder {folder} is excluded")
    neg = first_match(source.get("negative", []), norm)
    if neg:
        return Decision(None, f"negative word '{neg}'")
    return _decide(rules, source, rule, folder, norm)


def _decide(rules: dict[str, Any], source: dict[str, Any], rule: str, where: str, norm: str) -> Decision:
    overrides = {k: v for k, v in rules.get("overrides", {}).items() if not k.startswith("_")}
    ov = first_match(list(overrides), norm)
    if ov:
        return Decision(overrides[ov], f"override word '{ov}' ({where})")
    if rule == "concepts":
        cls, why = concept_class(rules, norm)
        return Decision(cls, f"{why} ({where})")
    if rule not in rules["classes"]:
        raise RulesError(f"folder rule {where!r} names unknown class {rule!r}")
    if rule in source.get("require_vocabulary", []):
        w = first_match(rules["vocabulary"][rule], norm)
        if not w:
            return Decision(None, f"no {rule} word in the name ({where})")
        return Decision(rule, f"folder {where} + word '{w}'")
    return Decision(rule, f"folder {where}")


def classify_named(rules: dict[str, Any], source: dict[str, Any], rule: str, where: str, stem: str) -> Decision:
    """Like :func:`classify_file` for a file whose folder rule is given (rcc entries)."""
    norm = normalise_name(stem)
    neg = first_match(source.get("negative", []), norm)
    if neg:
        return Decision(None, f"negative word '{neg}'")
    return _decide(rules, source, rule, where, norm)


def emoji_class(rules: dict[str, Any], unified: str, subgroup: str) -> Decision:
    em = rules["emoji"]
    cls = em["subgroups"].get(subgroup)
    if cls is None:
        return Decision(None, f"subgroup {subgroup} not used")
    drop = {k.upper(): v for k, v in em.get("drop", {}).items()}
    if unified.upper() in drop:
        return Decision(None, f"drop list: {drop[unified.upper()]}")
    return Decision(cls, f"subgroup {subgroup}")


def apply_curation(curation: dict[str, CurationEntry], ident: str, decision: Decision) -> Decision:
    entry = curation.get(ident)
    if entry is None or decision.cls is None:
        return decision
    if entry.action == EXCLUDE:
        return Decision(None, f"curation: {entry.reason or 'excluded by hand'}")
    return Decision(entry.action, f"curation: relabelled ({entry.reason})")
