"""What one run trains on and is judged on, fixed before it starts (:class:`RunTask`).

For a run (algorithm, target domain, trial seed) on a loaded dataset: the source domains and their
training pools, the evaluation splits, the classes' prompt names and the teacher's text classifier over
them, and, for the novel-class benchmark, the held-out classes' test images and text classifier. Nothing
here changes while the run trains; the loop (:mod:`vl2v.training.loop`), its evaluation
(:mod:`vl2v.training.evaluator`) and its teacher bill (:mod:`vl2v.training.bill`) read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from vl2v.config import TrainConfig
from vl2v.data.dataset import DomainData
from vl2v.errors import ConfigError
from vl2v.methods import AlgorithmInfo, TaskContext
from vl2v.teachers.prompts import class_prompt_names, prompts_for, text_classifier
from vl2v.training.resources import SharedResources
from vl2v.training.spec import RunSpec


@dataclass(frozen=True)
class RunTask:
    """One run's data: ``data`` holds the images with this trial seed's splits (the same images as
    ``res.data``); ``sources`` are every domain but the target, ``pools`` their training ("in") splits and
    ``train_indices`` those pools together, sorted."""

    spec: RunSpec
    cfg: TrainConfig
    res: SharedResources
    data: DomainData
    sources: list[int]
    pools: dict[int, list[int]]
    train_indices: list[int]

    @classmethod
    def of(cls, spec: RunSpec, cfg: TrainConfig, res: SharedResources, data: DomainData) -> "RunTask":
        sources = [d for d in range(len(data.domains)) if d != spec.target]
        pools = {d: data.split_items(d, "in") for d in sources}
        return cls(spec, cfg, res, data, sources, pools, sorted(i for p in pools.values() for i in p))

    @property
    def labels(self) -> torch.Tensor:
        return self.data.labels

    @property
    def target_name(self) -> str:
        return self.data.domains[self.spec.target]

    # ------------------------------------------------------------ prompts
    def all_prompt_names(self) -> list[str]:
        """Every class's prompt name, held-out classes included (``class_names`` covers every class)."""
        try:
            return class_prompt_names(self.data.all_classes, self.cfg.class_names)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def prompt_names(self) -> list[str]:
        """Each trained class's name in the prompts (the seen classes' only, when classes are held out)."""
        names = self.all_prompt_names()
        return names if self.data.seen is None else [names[c] for c in self.data.seen]

    def prompts(self) -> list[str]:
        """The trained classes' prompt texts (every template for every class, class-major)."""
        return prompts_for(self.data.classes, list(self.cfg.templates), self.prompt_names())

    def all_prompts(self) -> list[str]:
        """Every class's prompt texts, held-out classes included (the novel-class scores)."""
        return prompts_for(self.data.all_classes, list(self.cfg.templates), self.all_prompt_names())

    def context(self, info: AlgorithmInfo, teacher_encoder: Callable[[], Any] | None) -> TaskContext:
        """What the algorithm is built with: the classes, the teacher's text classifier over their prompts (paid
        through the store), and the teacher's image encoder for a white-box algorithm."""
        store = self.res.store
        text = dim = prompts = None
        names = self.prompt_names()
        if store is not None:
            emb = self.res.text_embeddings(prompts_for(self.data.classes, list(self.cfg.templates), names))
            text = text_classifier(emb, len(self.data.classes), len(self.cfg.templates))
            dim = store.dim
            prompts = self.res.text_embeddings
        return TaskContext(num_classes=len(self.data.classes), class_names=list(self.data.classes),
                           prompt_names=list(names), source_domains=[self.data.domains[d] for d in self.sources],
                           text_classifier=text, teacher_dim=dim, prompts=prompts,
                           teacher_encoder=teacher_encoder() if (info.needs_white_box and teacher_encoder) else None,
                           teacher_image_size=store.teacher.image_size if store else None,
                           schedule=self.cfg.schedule)

    # ------------------------------------------------------------ evaluation splits
    def eval_sets(self) -> list[tuple[int, str]]:
        """The evaluated splits: every domain's "out" split, the target's "in" split (the test set) and, with
        ``eval_source_in``, the sources' "in" splits."""
        sets = [(d, "out") for d in range(len(self.data.domains))] + [(self.spec.target, "in")]
        if self.cfg.eval_source_in:
            sets += [(d, "in") for d in self.sources]
        return sets

    def eval_indices(self) -> list[int]:
        """Every image of every evaluation split, once, in order."""
        return sorted({i for d, w in self.eval_sets() for i in self.data.split_items(d, w)})

    # ------------------------------------------------------------ novel-class benchmark
    def novel_target_items(self) -> list[int]:
        """The target's "in" split, every class (the novel-class benchmark's test images)."""
        return self.data.all_split_items(self.spec.target, "in")

    def novel_classifier(self) -> torch.Tensor:
        """The teacher's text classifier over every class, held-out ones included."""
        emb = self.res.text_embeddings(self.all_prompts())
        return text_classifier(emb, len(self.data.all_classes), len(self.cfg.templates))
