"""How one run is evaluated (:class:`Evaluator`): accuracy and cross-entropy on every evaluation split,
the novel-class benchmark's scores, and the selected model's per-image predictions.

A model is evaluated from whatever the current stage has cached (the pretrained student's pooled features,
or the activations of its frozen first stages: ``prefix_n``), else from rendered images; the teacher's
own zero-shot from its stored embeddings. Evaluation is sharded over the ranks of a data-parallel run and
summed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vl2v.methods import Algorithm, Batch
from vl2v.training.distributed import all_reduce_sum
from vl2v.training.distributed import info as dist_info
from vl2v.training.hooks import EvalInfo, TrainerHooks
from vl2v.training.stream import to_device
from vl2v.training.task import RunTask
from vl2v.utils.io import atomic_write_json


def autocast(amp: str, device: torch.device):
    """bf16 autocast for forward passes when ``amp`` says so (auto: with CUDA only)."""
    on = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


class Evaluator:
    """Evaluates one run's models. ``input_size``: the student's input side (set once the algorithm is built);
    ``prefix_n``: how many frozen student stages the current stage serves from a cache (0: none)."""

    def __init__(self, task: RunTask, device: torch.device, student_key: tuple, hooks: TrainerHooks) -> None:
        self.task, self.device, self.student_key, self.hooks = task, device, student_key, hooks
        self.input_size = task.cfg.image_size
        self.prefix_n = 0

    def autocast(self):
        return autocast(self.task.cfg.amp, self.device)

    @torch.no_grad()
    def logits(self, algo: Algorithm, idx: list[int], use_feats: bool) -> torch.Tensor:
        """``algo``'s logits on images ``idx``, from the caches the current stage reads where it can."""
        task, res = self.task, self.task.res
        logits = []
        bs = task.cfg.eval_batch_size
        for s in range(0, len(idx), bs):
            chunk = idx[s:s + bs]
            b = Batch(y=task.labels[chunk])
            if not algo.has_student:
                b.t_img = res.teacher_center(chunk)
            elif use_feats:
                b.feats = res.frozen_features(algo.student, chunk, "eval", self.student_key)
            elif self.prefix_n:
                b.hidden = res.frozen_features(algo.student, chunk, "eval", self.student_key, prefix=self.prefix_n)
                b.hidden_stage = self.prefix_n
            else:
                continue  # rendered below, in parallel
            with self.autocast():
                logits.append(algo.predict_batch(to_device(b, self.device)).float().cpu())
        if algo.has_student and not use_feats and not self.prefix_n:
            for s, x in zip(range(0, len(idx), bs), res.eval_batches(idx, self.input_size, bs)):
                b = Batch(y=task.labels[idx[s:s + bs]], x=x.float().div_(255.0))
                with self.autocast():
                    logits.append(algo.predict_batch(to_device(b, self.device)).float().cpu())
        return torch.cat(logits) if logits else torch.empty(0, len(task.data.classes))

    def evaluation(self, algo: Algorithm, use_feats: bool, stage: str, step: int) -> dict[str, float]:
        """An evaluation the run records: :meth:`evaluate` (or the hooks' placeholders), timed for the hooks."""
        sets = self.task.eval_sets()
        t0 = self.hooks.clock(self.device)
        ev = self.hooks.evaluation(sets)
        if ev is None:
            ev = self.evaluate(algo, use_feats)
        seconds = self.hooks.clock(self.device) - t0
        images = sum(len(self.task.data.split_items(d, w)) for d, w in sets)
        self.hooks.on_eval(EvalInfo(stage=stage, step=step, seconds=seconds, images=images, metrics=ev))
        return ev

    @torch.no_grad()
    def evaluate(self, algo: Algorithm, use_feats: bool) -> dict[str, float]:
        """Accuracy and cross-entropy on every evaluation split (sharded over ranks, then summed)."""
        task = self.task
        algo.eval()
        dist = dist_info()
        sets = task.eval_sets()
        sums = torch.zeros(len(sets), 3, dtype=torch.float64)  # correct, loss sum, count
        for k, (d, which) in enumerate(sets):
            idx = task.data.split_items(d, which)[dist.rank::dist.world_size]
            lg = self.logits(algo, idx, use_feats)
            y = task.labels[idx]
            if len(idx):
                sums[k, 0] = float((lg.argmax(dim=-1) == y).sum())
                sums[k, 1] = float(F.cross_entropy(lg, y, reduction="sum"))
                sums[k, 2] = len(idx)
        all_reduce_sum(sums)
        out: dict[str, float] = {}
        for k, (d, which) in enumerate(sets):
            n = float(sums[k, 2])
            out[f"env{d}_{which}_acc"] = float(sums[k, 0]) / n if n else float("nan")
            out[f"env{d}_{which}_loss"] = float(sums[k, 1]) / n if n else float("nan")
        out["val_acc"] = float(np.mean([out[f"env{d}_out_acc"] for d in task.sources]))
        out["val_loss"] = float(np.mean([out[f"env{d}_out_loss"] for d in task.sources]))
        algo.train()
        return out

    @torch.no_grad()
    def novel_scores(self, algo: Algorithm, checkpoint: str, fold: int | None) -> dict[str, Any]:
        """The novel-class benchmark's scores of ``algo`` on the target's "in" split (every class): seen classes
        among the seen names, held-out classes among the held-out names, and every image among every name (the
        generalised setting). Only a model that predicts by comparing with class text embeddings (its
        ``text_classes()``: ADiP, SD, the teacher's zero-shot) can name a class it never trained on; for the
        others the novel scores are None."""
        from vl2v.training.novel import novel_class_scores

        data = self.task.data
        out: dict[str, Any] = {"fold": fold, "held_out": [data.all_classes[c] for c in data.novel],
                               "seen_classes": list(data.classes), "checkpoint": checkpoint}
        text = algo.text_classes()
        idx = self.task.novel_target_items()
        if text is not None:
            algo.eval()
            try:
                with algo.with_text_classes(self.task.novel_classifier().to(text)), torch.no_grad():
                    logits = self.logits(algo, idx, use_feats=False)
            finally:
                algo.train()
            if logits.shape[-1] == len(data.all_classes):
                return {**out, **novel_class_scores(logits, data.all_labels[idx], list(data.seen or ()), data.novel)}
        return {**out, "text_head": False, "note": f"{algo.info.name} predicts with a classifier over its training "
                "classes: it cannot name a class it never saw"}

    @torch.no_grad()
    def teacher_cosine(self, algo: Algorithm) -> dict[str, Any] | None:
        """The mean cosine between the student's embedding ``z`` and the teacher's image embedding ``I_t`` of the
        same image, over the target's test ("in") split: how far the student has moved toward its teacher's
        image side out of domain. Only for a student that embeds into the teacher's space (``text_classes()``:
        ADiP, SD), and only from teacher answers already stored (the teacher's zero-shot stores them): it queries
        nothing and bills nothing; None where it cannot be measured so."""
        if algo.text_classes() is None or not algo.has_student:
            return None
        idx = self.task.data.split_items(self.task.spec.target, "in")
        t_img = self.task.res.stored_center(idx) if idx else None
        if t_img is None:
            return None
        algo.eval()
        try:  # cos(z_i, I_j) for every pair, through the model's own head: the diagonal is cos(z_i, I_i)
            with algo.with_text_classes(F.normalize(t_img, dim=-1).to(algo.text_classes())):
                logits = self.logits(algo, idx, use_feats=False)
        finally:
            algo.train()
        cos = torch.diagonal(logits).double() / float(getattr(algo.head(), "scale", 100.0))
        return {"mean": round(float(cos.mean()), 5), "images": len(idx), "split": "target in",
                "source": "stored teacher answers (no query)"}

    def write_predictions(self, algo: Algorithm, path: Path) -> None:
        """Per-image predictions of the selected model on the target's "in" split (confusion matrices, mistakes)."""
        task = self.task
        algo.eval()
        idx = task.data.split_items(task.spec.target, "in")
        logits = self.logits(algo, idx, use_feats=False)
        p = logits.softmax(-1)
        recs = task.res.data.bank.records
        labels = task.labels
        # margin: log-probability gap of the predicted over the true class (0 when right); unlike the softmax
        # confidence it does not saturate at 1, so the report can rank confident mistakes
        items = [{"path": recs[i].path, "label": int(labels[i]), "pred": int(p[j].argmax()),
                  "conf": round(float(p[j].max()), 5),
                  "margin": round(float(logits[j, p[j].argmax()] - logits[j, int(labels[i])]), 4)}
                 for j, i in enumerate(idx)]
        atomic_write_json(path, {"domain": task.target_name, "split": "in", "classes": task.data.classes,
                                 "root": str(task.data.scan.root), "items": items})
