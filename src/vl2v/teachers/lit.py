"""The offline LiT teacher: a locked ImageNet tower, a contrastively trained head on top.

LiT ("locked-image tuning", Zhai et al., CVPR 2022) keeps a pretrained image tower
frozen and trains what sits on top so that images land next to their captions.
Here the tower is the EfficientNet-Lite2 ImageNet classifier of the ConSE teacher
and the text tower is ConSE's sentence encoder (all-MiniLM-L6-v2), also locked; a
small head maps the tower's pooled features into the sentence space. It is trained
by ``vl2v teacher build NAME`` (:mod:`vl2v.teachers.lit_build`) on (icon, caption)
pairs from pinned npm packages and stored in ``<vl2v home>/teachers/NAME``.

Image embedding (both parts unit length, then mixed)::

    e(x) = (1 - b(x)) * normalize(head(f(x))) + b(x) * normalize(conse(logits(f(x))))
    g(x) = beta + (beta_confident - beta) * max softmax(logits(f(x)))
    b(x) = g(x) + (beta_far - g(x)) * clip((near - s(x)) / width, 0, 1)

where ``conse`` is the ConSE embedding of the same forward pass (the top-k
probability-weighted mean of ImageNet class-name embeddings): it keeps the tower's
photo knowledge. ``g`` leans towards ConSE as far as the ImageNet classifier is sure
of its top class (``beta_confident``; equal to ``beta``: a fixed weight). The novelty
gate (builds of format 2) measures how far the picture is from everything the head
was trained on: ``s(x)`` is the mean cosine similarity of the tower features to their
``k`` nearest training views (the bank ships with the head); at or above ``near`` (a
held-out icon's typical similarity) the weight is ``g``, and it moves to ``beta_far``
as ``s`` drops by ``width``: where the head would extrapolate (photographs), ConSE
speaks. The text side is the sentence encoder, as for ConSE, so the two parts live in
one space. Everything is differentiable (white-box for VL2V-SD).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vl2v.config import PosInt, config_dataclass
from vl2v.students.efficientnet_lite import LITE_MEAN, LITE_SIZES, LITE_STD, create_lite
from vl2v.teachers.base import Teacher, TeacherError
from vl2v.teachers.conse import conse_combine
from vl2v.teachers.registry import register_teacher
from vl2v.utils.hashing import file_digest
from vl2v.utils.io import vl2v_home

MANIFEST = "manifest.json"
WEIGHTS = "head.safetensors"
FORMAT = 2  # bump when the stored head or the embedding formula changes
READS = (1, 2)  # 1: no novelty gate (no bank in the weights file)
BANK = "novelty.bank"  # the weights file's key for the training-view features of the novelty gate


class LiTNotBuiltError(TeacherError):
    """The named LiT teacher has not been built yet."""


def teachers_root() -> Path:
    return vl2v_home() / "teachers"


def teacher_dir(spec: str | None) -> Path:
    """``lit`` / ``lit:NAME`` -> ``<home>/teachers/NAME``; ``lit:/some/dir`` (or ``./dir``) -> that folder."""
    name = spec or "lit"
    if os.sep in name or "/" in name or name.startswith("."):
        return Path(name).expanduser()
    if not name.replace("-", "").replace("_", "").isalnum():
        raise TeacherError(f"bad LiT teacher name {name!r}: use letters, digits, '-' and '_'")
    return teachers_root() / name


class Head(nn.Module):
    """Linear map (``hidden=0``) or a one-hidden-layer MLP with a linear shortcut."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.hidden = hidden
        self.linear = nn.Linear(in_dim, out_dim)
        if hidden:
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        y = self.linear(f)
        if self.hidden:
            y = y + self.mlp(f)
        return y


def mix(h: torch.Tensor, c: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """``beta``: a number, or one weight per row ([B, 1])."""
    return (1.0 - beta) * F.normalize(h, dim=-1) + beta * F.normalize(c, dim=-1)


def mix_weight(logits: torch.Tensor, beta: float, beta_confident: float) -> float | torch.Tensor:
    """The ConSE share of the mix: ``beta`` plus ``(beta_confident - beta)`` times the classifier's top probability."""
    if beta_confident == beta:
        return beta
    top = logits.float().softmax(dim=-1).amax(dim=-1, keepdim=True)
    return beta + (beta_confident - beta) * top


@dataclass(frozen=True)
class Novelty:
    """The novelty gate's settings (see the module docstring); the bank itself is a tensor beside them."""

    k: int
    near: float
    width: float
    beta_far: float

    def __post_init__(self) -> None:
        if self.k < 1 or self.width <= 0 or not 0.0 <= self.beta_far <= 1.0:
            raise ValueError(f"bad novelty gate {self}: k >= 1, width > 0 and 0 <= beta_far <= 1")

    def tag(self) -> str:
        return f"novelty=k{self.k},near={self.near:.4f},width={self.width:g},beta_far={self.beta_far:g};"


def novelty_score(f: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """Mean cosine similarity of each feature row to its ``k`` nearest rows of ``bank`` (unit rows) -> [B]."""
    sims = F.normalize(f.float(), dim=-1) @ bank.T
    return sims.topk(min(k, bank.shape[0]), dim=1).values.mean(dim=1)


def gated_weight(base: float | torch.Tensor, score: torch.Tensor, novelty: Novelty) -> torch.Tensor:
    """Move the ConSE share from ``base`` to ``beta_far`` as the novelty score falls below ``near``."""
    r = ((novelty.near - score) / novelty.width).clamp(0.0, 1.0).view(-1, 1)
    return base + (novelty.beta_far - base) * r


class LiTImageEncoder(nn.Module):
    """Differentiable image side: [B,3,S,S] in [0,1] -> mixed embedding (unnormalised)."""

    def __init__(self, tower: nn.Module, head: Head, class_text: torch.Tensor, k: int, beta: float,
                 image_size: int, beta_confident: float | None = None, novelty: Novelty | None = None,
                 bank: torch.Tensor | None = None) -> None:
        super().__init__()
        self.tower = tower
        self.head = head
        self.register_buffer("class_text", class_text.float())
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1))
        self.k, self.beta, self.image_size = k, float(beta), image_size
        self.beta_confident = self.beta if beta_confident is None else float(beta_confident)
        if (novelty is None) != (bank is None):
            raise ValueError("the novelty gate needs both its settings and its bank")
        self.novelty = novelty
        self.register_buffer("bank", None if bank is None else F.normalize(bank.float(), dim=-1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> the locked tower's pooled features [B, 1280]."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        return self.tower.forward_head(self.tower.forward_features(x), pre_logits=True)

    def from_features(self, f: torch.Tensor) -> torch.Tensor:
        logits = self.tower.classifier(f)
        c = conse_combine(logits, self.class_text, self.k)
        b = mix_weight(logits, self.beta, self.beta_confident)
        if self.novelty is not None:
            b = gated_weight(b, novelty_score(f, self.bank, self.novelty.k), self.novelty)
        return mix(self.head(f), c, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_features(self.features(x))


def load_tower() -> tuple[nn.Module, str]:
    """The locked EfficientNet-Lite2 ImageNet classifier (eval mode, no gradients, channels-last)."""
    model, tag = create_lite(2, pretrained=True)
    model.eval().to(memory_format=torch.channels_last)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tag


def read_manifest(folder: Path) -> dict[str, Any]:
    m = folder / MANIFEST
    if not m.is_file() or not (folder / WEIGHTS).is_file():
        name = folder.name
        raise LiTNotBuiltError(f"the LiT teacher {name!r} is not built ({folder} has no {MANIFEST} and {WEIGHTS}); "
                               f"run `vl2v teacher build {name}` first")
    try:
        return json.loads(m.read_text("utf-8"))
    except ValueError as exc:
        raise TeacherError(f"{m} is not valid JSON ({exc}); rebuild with `vl2v teacher build {folder.name} --force`") from None


class LiTTeacher(Teacher):
    backend = "lit"
    white_box = True
    text_batch_size = None

    def __init__(self, spec: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        from safetensors.torch import load_file

        from vl2v.teachers.conse import imagenet_class_names, load_sentence_encoder, text_tag

        folder = teacher_dir(spec)
        man = read_manifest(folder)
        if man.get("format") not in READS:
            raise TeacherError(f"{folder} holds a LiT teacher of format {man.get('format')}, this vl2v reads "
                               f"{', '.join(map(str, READS))}; "
                               f"rebuild it with `vl2v teacher build {folder.name} --force`")
        wfile = folder / WEIGHTS
        digest = file_digest(wfile)
        if digest != man["weights_sha256"]:
            raise TeacherError(f"{wfile} has sha256 {digest} but its manifest says {man['weights_sha256']}; "
                               f"rebuild it with `vl2v teacher build {folder.name} --force`")
        cfg = man["head"]
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.image_size = LITE_SIZES[2]
        tower, wtag = load_tower()
        self._text, text_path = load_sentence_encoder(None, device=str(self.device))
        ttag = text_tag(text_path)
        template = cfg["label_template"]
        with torch.no_grad():
            class_text = self._finish(self._encode_texts([template.format(c=n) for n in imagenet_class_names()]))
        self.embed_dim = int(class_text.shape[1])
        head = Head(int(cfg["in_dim"]), self.embed_dim, int(cfg["hidden"]))
        state = load_file(str(wfile))
        bank = state.pop(BANK, None)
        head.load_state_dict(state)
        head.eval()
        for p in head.parameters():
            p.requires_grad_(False)
        beta_conf = float(cfg.get("beta_confident", cfg["beta"]))  # absent in older builds: a fixed mix
        nov = Novelty(**cfg["novelty"]) if cfg.get("novelty") else None
        if (nov is None) != (bank is None):
            raise TeacherError(f"{folder}: the manifest and {WEIGHTS} disagree about the novelty gate "
                               f"(settings {'present' if nov else 'absent'}, bank {'absent' if bank is None else 'present'}); "
                               f"rebuild it with `vl2v teacher build {folder.name} --force`")
        self.encoder = LiTImageEncoder(tower, head, class_text, int(cfg["k"]), float(cfg["beta"]),
                                       self.image_size, beta_conf, nov, bank).to(self.device).eval()
        gate = "" if beta_conf == float(cfg["beta"]) else f"beta_confident={beta_conf};"
        gate += nov.tag() if nov else ""
        self.name = man.get("name", folder.name)
        self.manifest = man
        self._identity = (f"lit(name={self.name};weights=sha256:{digest};format={man['format']};"
                          f"tower=tf_efficientnet_lite2:{wtag};text=all-MiniLM-L6-v2:{ttag};k={cfg['k']};"
                          f"beta={cfg['beta']};{gate}hidden={cfg['hidden']};label_prompt={template!r};"
                          f"input={self.image_size}px;norm=(255x-127)/128)")

    def _encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        e = self._text.encode(texts, convert_to_tensor=True, batch_size=128, show_progress_bar=False)
        return e.float().cpu()

    def image_encoder(self) -> nn.Module:
        return self.encoder

    def to(self, device: torch.device | str) -> "LiTTeacher":
        self.device = torch.device(device)
        self.encoder.to(self.device)
        return self


# ------------------------------------------------------------------ the backend: --teacher lit[:NAME|:/path]
@config_dataclass
class LiTOptions:
    """``--teacher-opt`` options of the ``lit`` teacher."""

    batch_size: PosInt | None = None


@register_teacher("lit", white_box=True, offline=True, options=LiTOptions,
                  summary="LiT: locked EfficientNet-Lite2 + a head trained on icon captions, mixed with ConSE "
                          "(lit or lit:NAME; build it first: vl2v teacher build NAME)")
def _lit(spec: str | None = None, **opts: Any) -> Teacher:
    return LiTTeacher(spec, **opts)
