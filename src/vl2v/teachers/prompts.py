"""Class-name prompts and the text classifier T_c.

T_c = normalize(mean over templates of normalize(f_T(template.format(c)))).
Class names are folder names with "_" replaced by " ".
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from vl2v.config import DEFAULT_TEMPLATES  # noqa: E402,F401  (CLIP's default prompt; defined once, with the run config)


def class_name(folder: str) -> str:
    return folder.replace("_", " ").strip()


def validate_templates(templates: Sequence[str]) -> tuple[str, ...]:
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for t in templates:
        if "{c}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{c}}' placeholder for the class name")
    return tuple(templates)


def prompts_for(classes: Sequence[str], templates: Sequence[str]) -> list[str]:
    return [t.format(c=class_name(c)) for c in classes for t in templates]


def text_classifier(text_emb: torch.Tensor, n_classes: int, n_templates: int) -> torch.Tensor:
    """Average normalised prompt embeddings per class -> [C, D] normalised."""
    e = F.normalize(text_emb.float(), dim=-1).view(n_classes, n_templates, -1).mean(dim=1)
    return F.normalize(e, dim=-1)
