"""A DIAGNOSTIC teacher that knows the target domain, graded in quality: ``--teacher privileged:alpha=A``.

What is it for? The question users bring is "if my teacher is robust out of domain, does vl2v hand that
robustness to my small model?". Answering it needs teachers that are better than the student on the target
domain, in steps. CLIP is robust on PACS because its web data holds every style; this teacher is made robust
the blunt way, by letting it see the target domain:

* **The privileged part.** A linear head on the base teacher's locked image tower (ConSE: its classifier's
  ImageNet log-probabilities; another base: its image embedding), trained into the base teacher's *text*
  space (cross-entropy over cosine logits against the class prompts' embeddings) on the source domains'
  training splits **and the target domain's ``out`` split**. Never on the target's ``in`` split (the test
  set) nor the sources' ``out`` splits (the students' validation data).
* **The grade.** ``I = normalize(alpha * normalize(I_priv) + (1 - alpha) * normalize(I_base))``: alpha = 0 is
  the base teacher, alpha = 1 the privileged head alone, the steps between a family of teachers of growing
  out-of-domain quality. Texts are the base teacher's, unchanged.

It is bound to one experiment's target domain and trial seed (the splits it trained on): an experiment with it
must name exactly one ``--target`` and one ``--seed``, and its identity names both. It is labelled a
diagnostic wherever it appears (its identity starts with ``DIAGNOSTIC``), and never a default: a teacher that
has seen the target domain is not a result about generalisation, only a probe of what a student inherits from
a teacher of known quality.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vl2v.config import Fraction, config_dataclass
from vl2v.teachers.base import Teacher, TeacherError
from vl2v.teachers.registry import create_teacher, register_teacher, teacher_info

#: the head's fixed recipe (full-batch Adam on cached tower outputs; chosen once, before any student ran,
#: and never tuned on a test domain: the head's own accuracy is reported on the target's test split)
HEAD_STEPS = 300
HEAD_LR = 1e-2
HEAD_WEIGHT_DECAY = 1e-4
HEAD_SCALE = 30.0  # cosine logit scale in the head's cross-entropy


class NotBoundError(TeacherError):
    """The privileged teacher was asked for an image embedding before it was trained (:meth:`bind`)."""


class TowerCache:
    """Tower outputs of rendered views, keyed by the SHA-1 of the view's float32 pixels, in a SQLite file (or in
    memory): the graded teachers share one tower pass per view, whichever alpha and experiment asks first."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._mem: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self._db = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
            self._db.execute("CREATE TABLE IF NOT EXISTS tower (key TEXT PRIMARY KEY, value BLOB)")
            self._db.commit()

    @staticmethod
    def key(tag: str, x: torch.Tensor) -> str:
        h = hashlib.sha1(tag.encode())
        h.update(np.ascontiguousarray(x.detach().float().cpu().numpy()).tobytes())
        return h.hexdigest()

    def get(self, keys: list[str]) -> dict[str, np.ndarray]:
        out = {k: self._mem[k] for k in keys if k in self._mem}
        todo = [k for k in keys if k not in out]
        if todo and self._db is not None:
            with self._lock:
                for i in range(0, len(todo), 500):
                    part = todo[i:i + 500]
                    rows = self._db.execute(f"SELECT key, value FROM tower WHERE key IN ({','.join('?' * len(part))})",
                                            part).fetchall()
                    for k, v in rows:
                        out[k] = self._mem[k] = np.frombuffer(v, dtype=np.float32)
        return out

    def put(self, items: dict[str, np.ndarray]) -> None:
        self._mem.update(items)
        if self._db is not None and items:
            with self._lock:
                self._db.executemany("INSERT OR IGNORE INTO tower VALUES (?, ?)",
                                     [(k, v.astype(np.float32).tobytes()) for k, v in items.items()])
                self._db.commit()


class PrivilegedTeacher(Teacher):
    backend = "privileged"
    white_box = False
    text_batch_size = None

    def __init__(self, base: Teacher, alpha: float, cache: Path | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise TeacherError(f"privileged teacher: alpha must be in [0, 1], got {alpha}")
        self.base = base
        self.alpha = float(alpha)
        self.embed_dim = base.embed_dim
        self.image_size = base.image_size
        self.device = torch.device("cpu")
        self.batch_size = base.batch_size
        # a base with a classifier tower (ConSE) hands over its logits, and rebuilds its own embedding from them
        # (one tower pass per view for both parts); any other base: its image embedding is the tower
        self._tower_fn = getattr(base, "tower_features", None)
        self._from_tower = getattr(base, "embed_from_tower", None)
        self._tower_tag = (base.identity() + (";tower=logits" if self._tower_fn else ";tower=embedding"))
        self.cache = TowerCache(cache)
        self.head: torch.nn.Linear | None = None
        self.binding: dict[str, Any] | None = None

    # ------------------------------------------------------------------ the tower
    def _tower_chunk(self, x: torch.Tensor) -> torch.Tensor:
        if self._tower_fn is not None:
            return self._tower_fn(x).float().cpu()
        return self.base.embed_images(x).float().cpu()

    def tower(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] in [0,1] -> the locked tower's outputs [B, F] (cached per view)."""
        keys = [TowerCache.key(self._tower_tag, v) for v in x]
        have = self.cache.get(keys)
        todo = [i for i, k in enumerate(keys) if k not in have]
        if todo:
            new: dict[str, np.ndarray] = {}
            for s in range(0, len(todo), self.batch_size):
                part = todo[s:s + self.batch_size]
                with torch.no_grad():
                    out = self._tower_chunk(x[part])
                new.update({keys[i]: out[j].numpy().copy() for j, i in enumerate(part)})
            self.cache.put(new)
            have.update(new)
        return torch.from_numpy(np.stack([have[k] for k in keys])) if keys else torch.empty(0, 0)

    # ------------------------------------------------------------------ binding to an experiment
    def bind(self, views: torch.Tensor, labels: torch.Tensor, class_text: torch.Tensor, *, target: str,
             trial_seed: int, what: str, test_views: torch.Tensor | None = None,
             test_labels: torch.Tensor | None = None) -> dict[str, Any]:
        """Train the head on ``views`` ([N,3,S,S], the teacher's own evaluation view of each training image) of
        classes ``labels`` against ``class_text`` ([C, D], normalised class prompt embeddings of the base
        teacher). ``target``/``trial_seed`` name the splits (they enter the identity); ``what`` says which
        splits the images came from. ``test_views``: the target's test images, to report the head's accuracy
        (never used to train or choose anything). Returns what it measured."""
        feats = self._head_input(self.tower(views))
        mu, sd = feats.mean(0, keepdim=True), feats.std(0, keepdim=True).clamp_min(1e-6)
        g = torch.Generator().manual_seed(0)
        head = torch.nn.Linear(feats.shape[1], class_text.shape[1])
        with torch.no_grad():
            w = torch.randn(head.weight.shape, generator=g) / feats.shape[1] ** 0.5
            head.weight.copy_(w)
            head.bias.zero_()
        opt = torch.optim.Adam(head.parameters(), lr=HEAD_LR, weight_decay=HEAD_WEIGHT_DECAY)
        x = (feats - mu) / sd
        t = F.normalize(class_text.float(), dim=-1)
        for _ in range(HEAD_STEPS):
            opt.zero_grad()
            loss = F.cross_entropy(HEAD_SCALE * F.normalize(head(x), dim=-1) @ t.T, labels)
            loss.backward()
            opt.step()
        head.eval()
        for p in head.parameters():
            p.requires_grad_(False)
        self.head, self._mu, self._sd = head, mu, sd
        digest = hashlib.sha256()
        for part in (head.weight, head.bias, mu, sd):
            digest.update(part.detach().numpy().tobytes())
        info: dict[str, Any] = {"target": target, "trial_seed": trial_seed, "trained_on": what,
                                "n_train": int(len(labels)), "train_loss": round(float(loss.detach()), 4),
                                "head": digest.hexdigest()[:12]}
        self.binding = info
        if test_views is not None and test_labels is not None and len(test_labels):
            acc = {}
            for name, a in (("privileged_head", 1.0), ("base", 0.0), ("blend", self.alpha)):
                emb = self._blend(self.tower(test_views), test_views, a)
                acc[name] = round(float(((emb @ t.T).argmax(-1) == test_labels).float().mean()), 4)
            info["target_test_acc"] = acc  # a reading for the docs; nothing is chosen on it
        self._identity = (f"DIAGNOSTIC-privileged(alpha={self.alpha:g};target={target};trial_seed={trial_seed};"
                          f"head=linear[{self._tower_tag.rsplit(';', 1)[1]}]->text,{HEAD_STEPS}x{HEAD_LR:g},"
                          f"{info['head']};trained_on={what};base={self.base.identity()})")
        return info

    # ------------------------------------------------------------------ embeddings
    def _head_input(self, tower: torch.Tensor) -> torch.Tensor:
        """The head reads log-probabilities of a classifier tower, or an embedding tower's output as it is."""
        return tower.log_softmax(-1) if self._tower_fn is not None else tower

    def _blend(self, tower: torch.Tensor, x: torch.Tensor, alpha: float) -> torch.Tensor:
        parts = []
        with torch.no_grad():
            if alpha > 0:
                assert self.head is not None
                z = self.head((self._head_input(tower) - self._mu) / self._sd)
                parts.append(alpha * F.normalize(z, dim=-1))
            if alpha < 1:
                base = self._from_tower(tower) if self._from_tower is not None else self.base.embed_images(x)
                parts.append((1 - alpha) * F.normalize(base.float(), dim=-1))
        return F.normalize(sum(parts), dim=-1)

    def _encode_images(self, x: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            raise NotBoundError("the privileged teacher is trained per experiment (one --target, one --seed): it "
                                "is built by `vl2v train/compare --teacher privileged ...`, not on its own")
        return self._blend(self.tower(x), x, self.alpha)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.base.embed_texts(texts)

    def identity(self) -> str:
        if self.head is None:
            return f"DIAGNOSTIC-privileged(alpha={self.alpha:g};unbound;base={self.base.identity()})"
        return self._identity

    def to(self, device: torch.device | str) -> "PrivilegedTeacher":
        self.base.to(device)
        return self


def create_privileged(base: Teacher, alpha: float = 0.5, cache: bool = True) -> PrivilegedTeacher:
    """``--teacher privileged --teacher-opt alpha=A [base=TEACHER]`` over the built ``base`` teacher: unbound
    until the experiment trains it (:func:`bind_to_experiment`)."""
    from vl2v.utils.io import vl2v_home

    if isinstance(base, PrivilegedTeacher):
        raise TeacherError("privileged teacher: its base cannot be another privileged teacher")
    path = vl2v_home() / "cache" / "privileged-tower.sqlite" if cache else None
    return PrivilegedTeacher(base, alpha, path)


# ------------------------------------------------------------------ the backend: --teacher privileged[:alpha=A]
@config_dataclass
class PrivilegedOptions:
    """``--teacher-opt`` options of the ``privileged`` teacher; ``alpha`` and ``base`` may be written in the spec
    too (``privileged:alpha=0.5,base=conse``), typed by this class all the same."""

    alpha: Fraction | None = None  # weight of the privileged head: 0 = the base teacher, 1 = the head alone
    base: str | None = None  # the base teacher (default conse)
    cache: bool | None = None  # share tower outputs across experiments ($VL2V_HOME/cache/privileged-tower.sqlite)


#: the options a spec may name (``privileged:alpha=A,base=TEACHER``); ``cache`` only as --teacher-opt
SPEC_OPTIONS = ("alpha", "base")


@register_teacher("privileged", white_box=False, offline=True, options=PrivilegedOptions, experiment_bound=True,
                  summary="DIAGNOSTIC, never a default: a head trained on the TARGET domain's validation split (and "
                          "the sources' training splits) blended with a base teacher (conse): privileged:alpha=A; "
                          "one --target and one --seed per experiment")
def _privileged(spec: str | None = None, **opts: Any) -> Teacher:
    """``opts``: the --teacher-opt options, typed already; the spec's parts are typed here by the same
    :class:`PrivilegedOptions` (``privileged:alpha=abc`` fails as ``--teacher-opt alpha=abc`` does), and an
    option given both ways is the --teacher-opt one."""
    parts: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (spec or "").split(","))):  # privileged:alpha=0.5
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in SPEC_OPTIONS:
            raise TeacherError(f"privileged teacher: bad spec part {part!r}; write privileged:alpha=A")
        parts.setdefault(key.strip(), value.strip())  # the first of a repeated part, as ever
    typed = teacher_info("privileged").check_options(parts, what=f"teacher spec {'privileged:' + (spec or '')!r}")
    opts = {**typed, **opts}
    alpha = opts.pop("alpha", None)
    base = str(opts.pop("base", None) or "conse")
    if base.split(":", 1)[0] == "privileged":
        raise TeacherError("privileged teacher: its base cannot be another privileged teacher")
    return create_privileged(create_teacher(base), 0.5 if alpha is None else alpha, **opts)


def bind_to_experiment(teacher: PrivilegedTeacher, data: Any, target: int, names: Sequence[str],
                       templates: Sequence[str], log=print) -> dict[str, Any]:
    """Train ``teacher``'s head for leave-one-out target ``target`` of ``data`` (a DomainData with the trial
    seed's splits): the sources' ``in`` splits and the target's ``out`` split, never the target's ``in`` split
    (the test set) nor the sources' ``out`` splits (the students' validation data)."""
    from vl2v.data.transforms import teacher_view
    from vl2v.teachers.prompts import prompts_for, text_classifier

    sources = [d for d in range(len(data.domains)) if d != target]
    idx = [i for d in sources for i in data.split_items(d, "in")] + data.split_items(target, "out")
    test = data.split_items(target, "in")
    assert not set(idx) & set(test)
    size = teacher.image_size
    views = torch.stack([teacher_view(data.bank.image(i), None, size) for i in idx])
    test_views = torch.stack([teacher_view(data.bank.image(i), None, size) for i in test])
    emb = teacher.base.embed_texts(prompts_for(data.classes, list(templates), list(names)))
    text = text_classifier(emb, len(data.classes), len(templates))
    info = teacher.bind(views, data.labels[idx], text, target=data.domains[target], trial_seed=data.trial_seed,
                        what="sources:in+target:out", test_views=test_views, test_labels=data.labels[test])
    acc = info.get("target_test_acc", {})
    log(f"teacher: DIAGNOSTIC privileged teacher, alpha={teacher.alpha:g}: head trained on {info['n_train']} images "
        f"(sources' training splits + {data.domains[target]}'s validation split, trial seed {data.trial_seed}); "
        f"zero-shot on {data.domains[target]}'s test split: head {100 * acc.get('privileged_head', float('nan')):.1f}, "
        f"base {100 * acc.get('base', float('nan')):.1f}, blend {100 * acc.get('blend', float('nan')):.1f}")
    return info
