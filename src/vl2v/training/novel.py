"""Scores of the novel-class benchmark (classes held out of training, named at test time).

Three settings on the same test images, as zero-shot learning reports them (Xian et al., "Zero-shot learning:
the good, the bad and the ugly", 2017): the seen classes' images among the seen names, the held-out (novel)
classes' images among the novel names, and every image among every name (the *generalised* setting), where
a model that favours the classes it trained on loses its novel images to them; its summary is the harmonic
mean of the generalised seen and novel accuracies.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def _acc(logits: torch.Tensor, labels: torch.Tensor, columns: Sequence[int], rows: torch.Tensor) -> float | None:
    """Top-1 accuracy of the images ``rows`` with predictions restricted to the classes ``columns``."""
    if not int(rows.sum()):
        return None
    cols = torch.tensor(list(columns), dtype=torch.long)
    pred = cols[logits[rows][:, cols].argmax(dim=-1)]
    return float((pred == labels[rows]).float().mean())


def novel_class_scores(logits: torch.Tensor, labels: torch.Tensor, seen: Sequence[int],
                       novel: Sequence[int]) -> dict[str, Any]:
    """``logits`` [N, C] over every class for N test images of true class ``labels`` [N] (indices into the C
    classes); ``seen`` and ``novel`` split the classes. Accuracies in [0, 1] (None without images of that
    kind) and the image counts."""
    is_seen = torch.isin(labels, torch.tensor(list(seen), dtype=torch.long))
    is_novel = torch.isin(labels, torch.tensor(list(novel), dtype=torch.long))
    every = range(logits.shape[-1])
    g_seen, g_novel = _acc(logits, labels, every, is_seen), _acc(logits, labels, every, is_novel)
    hm = None
    if g_seen is not None and g_novel is not None:
        hm = 2 * g_seen * g_novel / (g_seen + g_novel) if g_seen + g_novel > 0 else 0.0
    return {"seen_acc": _acc(logits, labels, seen, is_seen), "novel_acc": _acc(logits, labels, novel, is_novel),
            "gzsl_seen_acc": g_seen, "gzsl_novel_acc": g_novel, "hm": hm,
            "n_seen": int(is_seen.sum()), "n_novel": int(is_novel.sum())}
