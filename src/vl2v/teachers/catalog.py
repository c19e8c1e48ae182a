"""What teachers are available: backends, open_clip's (model, pretrained tag) catalogue, transformers families.

``vl2v teacher list`` prints this. White-box means the backend can hand VL2V-SD a
differentiable copy of the image tower (:meth:`Teacher.image_encoder`); every
open_clip model and every supported transformers family can.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CatalogEntry:
    backend: str
    spec: str  # what goes after --teacher
    family: str
    white_box: bool
    notes: str = ""


# Ordered: the first matching rule names the family.
_OPENCLIP_FAMILIES: tuple[tuple[str, str], ...] = (
    ("siglip2", "SigLIP 2"), ("siglip", "SigLIP"), ("coca", "CoCa"), ("eva", "EVA-CLIP"),
    ("mobileclip", "MobileCLIP"), ("pe-core", "Perception Encoder"), ("vitamin", "ViTamin"),
    ("clipa", "CLIPA"), ("nllb", "NLLB-CLIP (multilingual)"), ("xlm-roberta", "multilingual CLIP"),
    ("mt5", "multilingual CLIP"), ("roberta", "CLIP (RoBERTa text)"), ("convnext", "CLIP ConvNeXt"),
)
_OPENCLIP_TAG_FAMILIES: tuple[tuple[str, str], ...] = (
    ("metaclip", "MetaCLIP"), ("dfn", "DFN-CLIP"), ("datacomp", "DataComp CLIP"), ("commonpool", "DataComp CLIP"),
    ("openai", "OpenAI CLIP"), ("laion", "OpenCLIP (LAION)"), ("yfcc", "OpenCLIP (YFCC)"), ("cc12m", "OpenCLIP (CC12M)"),
)


def openclip_family(model: str, tag: str = "") -> str:
    m, t = model.lower(), tag.lower()
    for key, fam in _OPENCLIP_FAMILIES:
        if key in m:
            return fam
    for key, fam in _OPENCLIP_TAG_FAMILIES:
        if key in t:
            return fam
    return "CLIP" if m.startswith(("vit", "rn")) else "other"


def _openclip_notes(open_clip: Any, model: str) -> str:
    cfg = open_clip.get_model_config(model) or {}
    text = cfg.get("text_cfg", {}) or {}
    notes = []
    if text.get("hf_tokenizer_name") or "siglip" in model.lower():
        notes.append("tokenizer from the HF Hub (offline: openclip:local-dir:DIR)")
    if text.get("hf_model_name"):
        notes.append(f"text tower config {text['hf_model_name']} from the HF Hub")
    return "; ".join(notes)


def openclip_catalog() -> list[CatalogEntry]:
    """Every (model, pretrained tag) pair open_clip knows, with its family; empty without open_clip."""
    try:
        import open_clip
    except ImportError:  # pragma: no cover - dependency of the package
        return []
    out = []
    notes: dict[str, str] = {}
    for model, tag in open_clip.list_pretrained():
        if model not in notes:
            notes[model] = _openclip_notes(open_clip, model)
        out.append(CatalogEntry("openclip", f"openclip:{model}:{tag}", openclip_family(model, tag), True, notes[model]))
    return out


def openclip_architectures_without_tags() -> list[str]:
    """open_clip architectures with no pretrained tag: random weights or your own checkpoint file."""
    try:
        import open_clip
    except ImportError:  # pragma: no cover
        return []
    tagged = {m for m, _ in open_clip.list_pretrained()}
    return [m for m in open_clip.list_models() if m not in tagged]


def transformers_catalog() -> list[CatalogEntry]:
    from vl2v.teachers.hf import FAMILIES

    return [CatalogEntry("transformers", f"transformers:{f.example}", f.name, f.white_box, f.summary)
            for f in FAMILIES.values()]


def render(what: str = "all", grep: str | None = None) -> str:
    """The text `vl2v teacher list` prints; ``what`` is all, backends, transformers or openclip."""
    from vl2v.teachers.registry import list_teachers

    g = (grep or "").lower()
    keep = (lambda *fields: any(g in str(f).lower() for f in fields)) if g else (lambda *fields: True)
    lines: list[str] = []
    if what in ("all", "backends"):
        lines.append("teacher backends (--teacher BACKEND[:SPEC]; white-box = VL2V-SD can fine-tune the image tower):")
        for info in list_teachers():
            if keep(info.name, info.summary):
                lines.append(f"  {info.name:<13} {'white-box' if info.white_box else 'black-box':<9}  "
                             f"{'offline' if info.offline else 'weights: download or local path':<32} "
                             f"{info.summary}")
        lines.append("")
    if what in ("all", "transformers"):
        from vl2v.teachers.hf import FAMILIES

        lines.append("transformers families (--teacher transformers:HUB_ID or transformers:/downloaded/dir):")
        lines.append(f"  {'family':<10} {'box':<9}  {'model types':<14} {'example hub id':<46} embedding")
        for f in FAMILIES.values():
            if keep(f.name, f.summary, f.example, *f.model_types):
                lines.append(f"  {f.name:<10} {'white-box' if f.white_box else 'black-box':<9}  "
                             f"{','.join(f.model_types):<14} {f.example:<46} {f.summary}")
        lines.append("")
    if what in ("all", "openclip"):
        cat = [e for e in openclip_catalog() if keep(e.spec, e.family, e.notes)]
        lines.append(f"open_clip catalogue ({len(cat)} model:tag pairs; --teacher openclip:MODEL:TAG, "
                     "downloads once; or openclip:MODEL:/path/checkpoint, openclip:local-dir:/path):")
        lines.append(f"  {'family':<26} {'box':<9}  {'--teacher':<64} notes")
        for e in sorted(cat, key=lambda e: (e.family, e.spec)):
            lines.append(f"  {e.family:<26} {'white-box' if e.white_box else 'black-box':<9}  {e.spec:<64} {e.notes}")
        bare = [m for m in openclip_architectures_without_tags() if keep(m, openclip_family(m))]
        if bare:
            lines.append("  architectures without a pretrained tag (openclip:MODEL:none or openclip:MODEL:/path): "
                         + ", ".join(bare))
    return "\n".join(lines).rstrip()
