"""Rebuild a trained model from a run directory (for predict, export and reports).

A run directory holds ``config.json`` (algorithm, student, image size, class
names, domains, hyperparameters) and ``model.safetensors`` (the selected
checkpoint's ``state_dict``; ``swad.safetensors`` for the SWAD average). The
state dict carries the teacher's text classifier (``text``) where the
algorithm predicts with it, so no teacher is needed to predict.

Layering: this module builds on methods/, students/ and teachers/ only (never
training/ or evaluation/), so every reader of runs can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vl2v.config import Schedule
from vl2v.methods import Algorithm, TaskContext, create_algorithm, get_algorithm
from vl2v.runs.layout import RunDir, spec_options


@dataclass
class LoadedRun:
    algorithm: Algorithm
    config: dict[str, Any]
    classes: list[str]
    image_size: int
    weights_path: Path

    @property
    def teacher_identity(self) -> str | None:
        return self.config.get("args", {}).get("teacher_identity")


def load_run_model(run_dir: str | Path, which: str = "selected", device: str = "cpu") -> LoadedRun:
    """``which``: ``"selected"`` (model.safetensors) or ``"swad"`` (swad.safetensors)."""
    from safetensors.torch import load_file

    rd = RunDir(run_dir)
    if not rd.has_config():
        raise FileNotFoundError(f"{rd.path} is not a vl2v run directory (no config.json)")
    cfg = rd.config()
    name = cfg["spec"]["algorithm"]
    info = get_algorithm(name)
    if not info.cls.has_student:
        raise ValueError(f"run {rd.path} is '{name}': it has no student model to load")
    wfile = rd.weights(which)
    if not wfile.exists():
        raise FileNotFoundError(f"{wfile} does not exist (is the run finished?)")
    state = load_file(str(wfile))  # the weights written by training.checkpoint.save_weights
    from vl2v.students.registry import create_student

    size = int(cfg.get("input_size") or cfg["train"]["image_size"])
    text = state.get("text")
    encoder, teacher_size = None, None
    if info.cls.uses_registry_student:
        student = create_student(cfg["args"]["student"], pretrained=False)
        student.image_size = size
    else:  # VL2V-SD: the student is a copy of the teacher's image encoder; rebuild the architecture
        from vl2v.teachers.registry import create_teacher

        teacher = create_teacher(cfg["args"]["teacher"], **(cfg["args"].get("teacher_options") or {}))
        encoder = teacher.image_encoder()
        # the teacher's own input size, as in training (vl2v.training.task): SD compares it with its image_size
        # hyperparameter to set the copy's resize; the run's input size here would leave a copy trained at
        # sd:image_size=128 resizing to the teacher's 260 px, another model than the one trained and scored
        teacher_size = teacher.image_size
        student = None
    classes = list(cfg["classes"])
    sources: list[str] = []
    prompts = None
    anchor = state.get("anchor_text")
    if anchor is not None:  # RISE: its anchor phrases' embeddings are in the checkpoint, no teacher is asked
        sources = [f"anchor {i}" for i in range(anchor.shape[1])]
        prompts = lambda texts: torch.zeros(len(texts), anchor.shape[-1])  # noqa: E731  (overwritten by the load)
    ctx = TaskContext(num_classes=len(classes), class_names=classes, source_domains=sources,
                      text_classifier=text if text is not None else torch.zeros(len(classes), 1),
                      teacher_dim=int(text.shape[1]) if text is not None else 1, prompts=prompts,
                      teacher_encoder=encoder, teacher_image_size=teacher_size, schedule=Schedule())
    algo = create_algorithm(name, ctx, student, spec_options(cfg["spec"]))
    algo.load_state_dict(state, strict=True)
    algo.to(device).eval()
    return LoadedRun(algo, cfg, classes, size, wfile)
