"""What runs on the same data share: views, cached student features, teacher targets, eval inputs.

A LODO sweep trains many (algorithm, target) runs on one dataset. Anything
that does not depend on the run is computed once here:

* the **view plan**: K seeded augmentation views per image (``views=K``; K=0: the identity view),
  independent of target, algorithm and trial seed, so each teacher embedding is
  paid for once and replayed by every run;
* **teacher targets**: the teacher's embeddings of those views (through the
  :class:`TeacherStore`, so also across processes);
* **frozen features**: the pretrained student's features of the same views
  (frozen-backbone stages train on these instead of images);
* **eval inputs**: every image's evaluation view at the student's size (held in
  memory for in-memory datasets; rendered again by loader workers for streamed ones,
  so memory stays flat in the dataset's size).

Rendering goes through :func:`vl2v.data.loader.render_stream`: ``workers`` loader
processes decode and render in parallel, with the same results as ``workers=0``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vl2v.data.dataset import DomainData
from vl2v.data.loader import RenderRequest, render_stream
from vl2v.data.transforms import AugConfig, AugParams, teacher_view, training_views
from vl2v.students.registry import Student
from vl2v.teachers.store import TeacherStore
from vl2v.utils.io import atomic_path
from vl2v.utils.progress import bar


def _as_tuple(x):
    """A cache key read back from JSON: lists become tuples again, all the way down."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, list) else x


@dataclass
class SharedResources:
    data: DomainData
    store: TeacherStore | None
    views: int = 0  # K; 0 = the un-augmented view only
    view_seed: int = 0
    aug: AugConfig = field(default_factory=AugConfig)
    batch_size: int = 64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = 0  # loader worker processes that decode and render views (0: the main process)
    _params: dict[int, list[AugParams]] = field(default_factory=dict)
    _targets: dict[int, torch.Tensor] = field(default_factory=dict)  # bank idx -> [V, D]
    _center: dict[int, torch.Tensor] = field(default_factory=dict)  # bank idx -> [D] (teacher's eval view)
    _features: dict[tuple, dict[int, torch.Tensor]] = field(default_factory=dict)
    _eval_inputs: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)  # size -> idx -> uint8
    _text: dict[tuple, torch.Tensor] = field(default_factory=dict)

    # ---------------------------------------------------------------- views
    def view_list(self, i: int) -> list[AugParams]:
        """The stored views of training image ``i``: K augmentations, or the identity view if K=0
        (:func:`~vl2v.data.transforms.training_views`)."""
        if i not in self._params:
            self._params[i] = list(training_views(self.data.bank.hashes[i], self.views, self.view_seed, self.aug,
                                                  self.data.bank.aspect(i)))
        return self._params[i]

    @property
    def n_views(self) -> int:
        return max(1, self.views)

    # ------------------------------------------------------- teacher side
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        assert self.store is not None
        key = tuple(texts)
        if key not in self._text:
            self._text[key] = self.store.text_embeddings(texts)
        return self._text[key]

    def teacher_targets(self, indices: list[int], desc: str = "teacher embeddings") -> torch.Tensor:
        """[len(indices), V, D] teacher embeddings of every training view (cached, paid once)."""
        assert self.store is not None
        todo = [i for i in indices if i not in self._targets]
        if todo:
            keys, owners = [], []
            for i in todo:
                for p in self.view_list(i):
                    keys.append((self.data.bank.hashes[i], p))
                    owners.append(i)
            size = self.store.teacher.image_size
            pbar = bar(len(keys), desc=desc, unit="view")
            try:
                emb = self.store.image_embeddings(
                    keys, lambda j: teacher_view(self.data.bank.image(owners[j]), keys[j][1], size),
                    batch_size=self.batch_size, on_batch=pbar.update)
            finally:
                pbar.close()
            pos = 0
            for i in todo:
                v = len(self.view_list(i))
                self._targets[i] = emb[pos:pos + v]
                pos += v
        return torch.stack([self._targets[i] for i in indices])

    def teacher_center(self, indices: list[int], desc: str = "teacher eval embeddings") -> torch.Tensor:
        """[len(indices), D] teacher embeddings of the teacher's own evaluation view."""
        assert self.store is not None
        todo = [i for i in indices if i not in self._center]
        if todo:
            size = self.store.teacher.image_size
            keys = [(self.data.bank.hashes[i], None) for i in todo]
            pbar = bar(len(keys), desc=desc, unit="img")
            try:
                emb = self.store.image_embeddings(
                    keys, lambda j: teacher_view(self.data.bank.image(todo[j]), None, size),
                    batch_size=self.batch_size, on_batch=pbar.update)
            finally:
                pbar.close()
            for i, e in zip(todo, emb):
                self._center[i] = e
        return torch.stack([self._center[i] for i in indices])

    def stored_center(self, indices: list[int]) -> torch.Tensor | None:
        """The teacher's embeddings of its evaluation view of ``indices`` if the store holds every one of them, else
        None. A look-up only: it queries nothing and counts nothing in the run's bill (a diagnostic reads it)."""
        if self.store is None:
            return None
        from vl2v.teachers.store import view_id

        keys = [(self.data.bank.hashes[i], view_id(None)) for i in indices]
        found = self.store.lookup_images(keys)
        if len(found) < len(set(keys)):
            return None
        return torch.from_numpy(np.stack([found[k] for k in keys])).float()

    def online_targets(self, images: torch.Tensor) -> torch.Tensor:
        """Query the teacher for freshly augmented views (the authors' online mode; not cached)."""
        assert self.store is not None
        return self.store.query_images(images)

    # ------------------------------------------------------- student side
    @torch.no_grad()
    def frozen_features(self, student: Student, indices: list[int], kind: str, key: tuple,
                        prefix: int | None = None) -> torch.Tensor:
        """Pretrained-student features: ``kind="train"`` -> [N, V, d] over the views; ``"eval"`` -> [N, d].

        ``prefix=n``: instead of features, the activations after the student's first ``n`` stages
        (``student.forward_prefix``), for runs that keep those stages frozen: [N, V, C, H, W] / [N, C, H, W].
        """
        cache = self._features.setdefault(key + (kind,) + (("prefix", prefix) if prefix else ()), {})
        # Images go through the network in fixed blocks of the dataset (block b = images b*n .. b*n+n-1, all their
        # views), whichever of them were asked for: a convolution's float result can depend on the batch it is
        # in, so an image's cached features must not depend on which runs came before (or on which worker
        # process of a parallel comparison computed them).
        per_image = 1 if kind == "eval" else self.n_views
        n = max(1, self.batch_size // per_image)
        blocks = sorted({i // n for i in indices if i not in cache})
        if blocks:
            was = student.training
            student.eval()
            size = student.image_size
            members = [range(b * n, min(len(self.data.bank), (b + 1) * n)) for b in blocks]
            todo = [i for block in members for i in block]
            chunks: list[list[tuple[int, int, AugParams | None]]] = []
            for block in members:
                jobs: list[tuple[int, int, AugParams | None]] = []
                for i in block:
                    if kind == "eval":
                        jobs.append((i, 0, None))
                    else:
                        jobs.extend((i, k, p) for k, p in enumerate(self.view_list(i)))
                chunks.append(jobs)
            what = f"student stage-{prefix} activations" if prefix else "student features"
            pbar = bar(sum(map(len, chunks)), desc=f"{what} ({kind})", unit="img")
            out: dict[tuple[int, int], torch.Tensor] = {}
            for chunk, x in zip(chunks, self._render([[(i, p) for i, _, p in c] for c in chunks], size)):
                x = x.to(self.device).float().div_(255.0)
                x = x.contiguous(memory_format=torch.channels_last)
                f = (student.forward_prefix(x, prefix) if prefix else student(x)).float().cpu()
                for (i, k, _), fi in zip(chunk, f):
                    out[(i, k)] = fi
                pbar.update(len(chunk))
            pbar.close()
            for i in todo:
                if kind == "eval":
                    cache[i] = out[(i, 0)]
                else:
                    cache[i] = torch.stack([out[(i, k)] for k in range(len(self.view_list(i)))])
            student.train(was)
        return torch.stack([cache[i] for i in indices])

    def save_features(self, path: Path) -> None:
        """Write every cached student feature/activation (:meth:`frozen_features`) to one safetensors file."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        keys = []
        for k, (key, cache) in enumerate(self._features.items()):
            if not cache:
                continue
            idx = sorted(cache)
            tensors[f"{k}.index"] = torch.tensor(idx, dtype=torch.int64)
            tensors[f"{k}.values"] = torch.stack([cache[i] for i in idx]).contiguous()
            keys.append([k, key])
        with atomic_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys)})

    def load_features(self, path: Path) -> None:
        """Add the caches :meth:`save_features` wrote (the same values this process would compute)."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            for k, key in json.loads(f.metadata()["keys"]):
                cache = self._features.setdefault(_as_tuple(key), {})
                for i, v in zip(f.get_tensor(f"{k}.index").tolist(), f.get_tensor(f"{k}.values")):
                    cache.setdefault(int(i), v)

    def prefix_cache_fits(self, student: Student, n: int, indices: int, budget: int = 4 << 30) -> bool:
        """Whether holding stage-``n`` activations of ``indices`` images x views stays within ``budget`` bytes."""
        if self.data.bank.streamed:
            return False
        with torch.no_grad():
            was = student.training
            student.eval()
            probe = torch.zeros(1, 3, student.image_size, student.image_size, device=self.device)
            per = student.forward_prefix(probe.contiguous(memory_format=torch.channels_last), n).numel() * 4
            student.train(was)
        return per * indices * self.n_views <= budget

    @property
    def _pin(self) -> bool:
        return self.device.type == "cuda"

    def eval_batches(self, indices: list[int], size: int, batch_size: int):
        """uint8 [n, 3, size, size] evaluation views (resize to size x size, DomainBed's eval transform) of
        ``indices`` in chunks of ``batch_size``: held once rendered (in-memory datasets) or rendered by the
        loader workers each time (streamed datasets)."""
        def chunked(items: list[int]) -> list[list[int]]:
            return [items[s:s + batch_size] for s in range(0, len(items), batch_size)]

        chunks = chunked(indices)
        if self.data.bank.streamed:
            yield from self._render([[(i, None) for i in c] for c in chunks], size)
            return
        cache = self._eval_inputs.setdefault(size, {})
        todo = chunked([i for i in dict.fromkeys(indices) if i not in cache])
        for c, x in zip(todo, self._render([[(i, None) for i in c] for c in todo], size, pin=False)):
            cache.update(zip(c, x))
        for c in chunks:
            yield torch.stack([cache[i] for i in c])

    def _render(self, chunks: list[list[tuple[int, AugParams | None]]], size: int, pin: bool | None = None):
        """uint8 [n, 3, size, size] student views of each chunk of ``(image, params)``, rendered by the loader
        workers (pinned memory on CUDA unless ``pin=False``: views held in the cache stay unpinned)."""
        requests = (RenderRequest((("student", size, tuple(c)),)) for c in chunks)
        for (x,) in render_stream(self.data.bank, requests, self.workers, self._pin if pin is None else pin):
            yield x
