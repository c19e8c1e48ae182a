"""Prediction heads: the part of an algorithm that maps the student's features to class logits.

Each algorithm returns its own from :meth:`vl2v.methods.base.Algorithm.head` (built from its own parameters,
so it computes exactly ``algorithm.logits``); export bakes it into the deployed model
(:mod:`vl2v.serving.export`) and records :meth:`describe` in the model's sidecar.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class CosineHead(nn.Module):
    """``scale * cos(P(f), T_c)`` with the class text embeddings ``T_c`` stored normalised (``P``: a projection,
    or None for the identity, as VL2V-SD's student embeds into the teacher's space itself)."""

    def __init__(self, projection: nn.Module | None, text: torch.Tensor, scale: float = 100.0) -> None:
        super().__init__()
        self.projection = projection if projection is not None else nn.Identity()
        self.scale = float(scale)
        self.register_buffer("classifier", F.normalize(text.detach().float(), dim=-1).clone())

    def embedding(self, feats: torch.Tensor) -> torch.Tensor:
        """``z = normalize(P(f))``: the student's embedding in the teacher's text space."""
        z = self.projection(feats)
        return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.embedding(feats) @ self.classifier.t())

    def describe(self) -> dict[str, Any]:
        """The head as the export sidecar records it."""
        p = self.projection
        projection = [p.in_features, p.out_features] if isinstance(p, nn.Linear) else None
        rule = "P(g(x))" if projection else "g(x)"
        return {"kind": "cosine-to-text", "scale": self.scale, "projection": projection,
                "classes_embedding_dim": int(self.classifier.shape[1]),
                "rule": f"logits_c = {self.scale:g} * cos({rule}, T_c), T_c = teacher text embedding of class c"}


class LinearHead(nn.Module):
    """``W f + b``: a linear classifier over the training classes."""

    def __init__(self, classifier: nn.Linear) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(feats)

    def describe(self) -> dict[str, Any]:
        c = self.classifier
        return {"kind": "linear", "shape": [c.in_features, c.out_features], "rule": "logits = W g(x) + b"}


class AlgorithmHead(nn.Module):
    """Fallback for an algorithm without a separable head (its ``head()`` is None): its own ``logits``."""

    def __init__(self, algorithm: nn.Module) -> None:
        super().__init__()
        self.algorithm = algorithm

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.algorithm.logits(feats)

    def describe(self) -> dict[str, Any]:
        return {"kind": "algorithm-logits", "rule": f"{type(self.algorithm).__name__}.logits(g(x))"}
