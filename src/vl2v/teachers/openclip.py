"""open_clip teachers: any open_clip architecture with a pretrained tag or a local checkpoint.

``openclip:ViT-B-16:openai`` downloads OpenAI's CLIP ViT-B/16 through
open_clip's own loader (internet needed once; open_clip caches it);
``openclip:ViT-B-16:/path/to/weights.safetensors`` (or ``.pt``/``.bin``) loads a
local checkpoint; ``openclip:ViT-B-16:none`` builds random weights (tests,
speed benchmarks). ``openclip:local-dir:/path`` loads a downloaded open_clip
Hub folder (``open_clip_config.json``, weights and, for SigLIP-style models,
the tokenizer files; e.g. ``huggingface-cli download timm/ViT-B-16-SigLIP
--local-dir /path``) fully offline; ``openclip:hf-hub:org/repo`` fetches one.
The preprocessing is open_clip's own for that model: the model's mean and std
and input size (for a local checkpoint file: those of the model's pretrained
tags when they agree, or of the tag named by the ``preprocess=TAG`` option);
shortest-side resize + centre crop for the evaluation view.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vl2v.config import PosInt, config_dataclass
from vl2v.teachers.base import Teacher, TeacherError, TeacherWeightsError
from vl2v.teachers.registry import register_teacher
from vl2v.utils.hashing import cached_file_digest


class OpenCLIPImageEncoder(nn.Module):
    """[B,3,S,S] in [0,1] -> unnormalised image embedding, with the model's own normalisation."""

    def __init__(self, visual: nn.Module, mean, std, image_size: int) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        out = self.visual((x - self.mean) / self.std)
        if isinstance(out, (tuple, list)):  # CoCa-style towers return (pooled, tokens)
            out = out[0]
        return out


class OpenCLIPTeacher(Teacher):
    backend = "openclip"
    white_box = True

    def __init__(self, model: str = "ViT-B-16", pretrained: str | None = "openai", device: str = "cpu",
                 batch_size: int = 64, cache_dir: str | None = None, preprocess: str | None = None) -> None:
        try:
            import open_clip
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise TeacherError("the openclip teacher needs open-clip-torch (pip install open-clip-torch)") from exc
        schema = model.split(":", 1)[0] if model.startswith(("local-dir:", "hf-hub:")) else None
        if schema is None and model not in open_clip.list_models():
            raise TeacherError(f"open_clip has no model {model!r}; see `vl2v teacher list` or open_clip.list_models()")
        self.model_name = model
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        clip, model, weights, tag_preprocess = _load_model(open_clip, model, schema, pretrained, cache_dir, preprocess)
        self.model_name = model
        clip.eval()
        self.clip = clip.to(self.device)
        try:
            self.tokenizer = open_clip.get_tokenizer(model, cache_dir=cache_dir)
        except Exception as exc:
            raise TeacherError(
                f"cannot build the tokenizer of open_clip {model} ({type(exc).__name__}: {exc}); SigLIP-style models "
                "fetch theirs from the Hugging Face Hub: download the model folder and use openclip:local-dir:DIR") from exc
        size, mean, std, interp = _preprocessing(open_clip, clip, tag_preprocess)
        self.image_size = size
        self.encoder = OpenCLIPImageEncoder(clip.visual, mean, std, size).to(self.device).eval()
        for p in self.clip.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            dim = int(self.clip.encode_text(self.tokenizer(["a"]).to(self.device)).shape[-1])
            img_dim = int(self.encoder(torch.zeros(1, 3, size, size, device=self.device)).shape[-1])
        if dim != img_dim:
            raise TeacherError(f"open_clip {model}: image ({img_dim}) and text ({dim}) embedding sizes differ")
        self.embed_dim = dim
        self._identity = (f"openclip({model};weights={weights};input={size}px-{interp}-shortest-centercrop;"
                          f"mean={tuple(round(m, 6) for m in mean)};std={tuple(round(s, 6) for s in std)})")

    def _encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.clip.encode_text(self.tokenizer(texts).to(self.device))

    def image_encoder(self) -> nn.Module:
        return self.encoder

    def to(self, device: torch.device | str) -> "OpenCLIPTeacher":
        self.device = torch.device(device)
        self.clip.to(self.device)
        self.encoder.to(self.device)
        return self


def _load_model(open_clip, model: str, schema: str | None, pretrained: str | None, cache_dir: str | None,
                preprocess: str | None) -> tuple[nn.Module, str, str, dict | None]:
    """The open_clip model of ``model`` (``local-dir:DIR``, ``hf-hub:REPO`` or an architecture name) with the
    ``pretrained`` weights: returns it, the model's name (a local folder resolved), the weights' part of the
    identity, and the preprocessing of a local checkpoint file's tags (None: the model's own)."""
    if schema == "local-dir":
        return (*_load_local_dir(open_clip, model), None)
    if schema == "hf-hub":
        try:
            clip = open_clip.create_model(model, cache_dir=cache_dir)
        except Exception as exc:
            raise TeacherWeightsError(f"cannot fetch {model} (no network? download it and use openclip:local-dir:DIR): {exc}") from exc
        return clip, model, model, None
    if pretrained in (None, "", "none", "random"):
        return open_clip.create_model(model, pretrained=None), model, "random", None
    if Path(pretrained).expanduser().exists():
        path = Path(pretrained).expanduser()
        clip = open_clip.create_model(model, pretrained=None)
        try:
            open_clip.load_checkpoint(clip, str(path), strict=True, weights_only=True)
        except Exception as exc:
            raise TeacherError(f"cannot load open_clip checkpoint {path} into {model}: {exc}") from exc
        weights = f"{path.name}:{cached_file_digest(path)[:12]}"
        return clip, model, weights, _tag_preprocess(open_clip, model, preprocess)
    return _load_pretrained_tag(open_clip, model, pretrained, cache_dir), model, f"{pretrained}", None


def _load_local_dir(open_clip, model: str) -> tuple[nn.Module, str, str]:
    """A downloaded open_clip Hub folder (``local-dir:DIR``): the model, ``local-dir:<resolved DIR>`` and
    ``dir:sha256:<digest of the folder>``."""
    folder = Path(model.split(":", 1)[1]).expanduser().resolve()
    if not (folder / "open_clip_config.json").is_file():
        raise TeacherError(f"{folder} is not an open_clip model folder (no open_clip_config.json)")
    if not any(folder.glob(g) for g in ("*.safetensors", "*.bin", "*.pth")):
        raise TeacherError(f"{folder} has no weights file (*.safetensors, *.bin or *.pth)")
    from vl2v.teachers.hf import _dir_digest

    model = f"local-dir:{folder}"
    try:
        clip = open_clip.create_model(model)
    except Exception as exc:
        raise TeacherError(f"cannot load the open_clip model in {folder}: {exc}") from exc
    return clip, model, f"dir:sha256:{_dir_digest(folder)[:16]}"


def _load_pretrained_tag(open_clip, model: str, pretrained: str, cache_dir: str | None) -> nn.Module:
    """``model`` with open_clip's pretrained weights ``pretrained`` (a tag of the model; fetched once, then
    from open_clip's cache)."""
    tags = [t for m, t in open_clip.list_pretrained() if m == model]
    if pretrained not in tags:
        raise TeacherError(
            f"{pretrained!r} is neither a local file nor a pretrained tag of {model} "
            f"(tags: {', '.join(tags) or 'none'})")
    try:
        return open_clip.create_model(model, pretrained=pretrained, cache_dir=cache_dir)
    except Exception as exc:  # no network and not in the cache: say what to pass instead
        raise TeacherWeightsError(
            f"cannot fetch open_clip's {model} weights {pretrained!r} ({type(exc).__name__}: {exc}). "
            f"Offline? Pass a local checkpoint as openclip:{model}:/path/to/ckpt (open_clip or OpenAI .pt "
            f"file), a model folder as openclip:local-dir:DIR, or an offline teacher (--teacher conse)."
        ) from exc


def _preprocessing(open_clip, clip: nn.Module, tag_preprocess: dict | None) -> tuple[int, tuple, tuple, str]:
    """The model's input size, mean, std and interpolation: its own preprocessing, updated by
    ``tag_preprocess`` (a local checkpoint file's tags)."""
    cfg = dict(getattr(clip.visual, "preprocess_cfg", {}) or {})
    if tag_preprocess:
        cfg.update(tag_preprocess)
    size = cfg.get("size", getattr(clip.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
    return size, mean, std, cfg.get("interpolation", "bicubic")


def _tag_preprocess(open_clip, model: str, tag: str | None) -> dict | None:
    """mean/std/interpolation of ``tag`` (or of all the model's tags when they agree) for a local checkpoint file.

    open_clip applies a tag's preprocessing only when it downloads by tag; a local copy of, say, a SigLIP
    checkpoint would otherwise be normalised with CLIP's mean and std.
    """
    tags = [tag] if tag else [t for m, t in open_clip.list_pretrained() if m == model]
    if tag and not open_clip.get_pretrained_cfg(model, tag):
        raise TeacherError(f"preprocess={tag!r} is not a pretrained tag of {model}")
    keys = ("mean", "std", "interpolation")
    found = {json.dumps({k: open_clip.get_pretrained_cfg(model, t).get(k) for k in keys}, sort_keys=True) for t in tags}
    if len(found) != 1:
        return None  # no tags, or tags that disagree: open_clip's defaults (choose with preprocess=TAG)
    return {k: v for k, v in json.loads(found.pop()).items() if v is not None}


# ------------------------------------------------------------------ the backend: --teacher openclip:MODEL:TAG
@config_dataclass
class OpenCLIPOptions:
    """``--teacher-opt`` options of the ``openclip`` teacher."""

    batch_size: PosInt | None = None
    cache_dir: str | None = None
    preprocess: str | None = None


@register_teacher("openclip", white_box=True, offline=False, options=OpenCLIPOptions,
                  summary="any open_clip model: openclip:MODEL:TAG, openclip:MODEL:/path/to/checkpoint or openclip:local-dir:/path")
def _openclip(spec: str | None = None, **opts: Any) -> Teacher:
    model, pretrained = "ViT-B-16", "openai"
    if spec and spec.startswith(("local-dir:", "hf-hub:")):
        model, pretrained = spec, None
    elif spec:
        parts = spec.split(":", 1)
        model = parts[0]
        if len(parts) > 1:
            pretrained = parts[1]
    return OpenCLIPTeacher(model=model, pretrained=pretrained, **opts)
