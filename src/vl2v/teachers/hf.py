"""Hugging Face ``transformers`` teachers: CLIP, MetaCLIP 2, SigLIP, SigLIP 2, ALIGN, FLAVA, BLIP.

``transformers:<hub id or local dir>`` loads a vision-language model with the
library's own ``from_pretrained`` (``local_files_only`` for a directory, e.g.
one written by ``huggingface-cli download ... --local-dir DIR``), detects its
family from ``config.json`` and embeds images and texts in the space the model
was trained to align them in (the contrastive / image-text-contrastive space):

=========  ========================================================  ===========================================
family     image embedding                                           text embedding
=========  ========================================================  ===========================================
clip       ``visual_projection(vision_model.pooler_output)``         ``text_projection(text_model.pooler_output)``
metaclip2  same as clip                                              same as clip
siglip     ``vision_model.pooler_output`` (attention-pool head)      ``text_model.pooler_output`` (last token + head)
siglip2    same as siglip, NaFlex patches of a square image          same as siglip
align      ``vision_model.pooler_output`` (EfficientNet avg pool)    ``text_projection(text_model CLS state)``
flava      ``image_projection(image_model CLS state)``               ``text_projection(text_model CLS state)``
blip       ``vision_proj(vision_model CLS state)`` (ITC)             ``text_proj(text_encoder CLS state)`` (ITC)
=========  ========================================================  ===========================================

Both sides are L2-normalised on the way out. Preprocessing is the model's own
processor's: its input size (crop size where it centre-crops), rescale factor
(and ALIGN's offset), mean and std; the text side uses the processor's
tokenizer with the padding the family was trained with (SigLIP: padded to the
full context, no attention mask). Geometry (resize / crop / augmentation) is
the caller's, as for every teacher (see :mod:`vl2v.teachers.base`).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vl2v.config import PosInt, config_dataclass
from vl2v.teachers.base import Teacher, TeacherError
from vl2v.teachers.registry import register_teacher
from vl2v.utils.extras import require
from vl2v.utils.hashing import files_digest


# --------------------------------------------------------------------------- families
@dataclass(frozen=True)
class HFFamily:
    """How one transformers architecture family is embedded."""

    name: str
    model_types: tuple[str, ...]  # config.model_type values of this family
    model_class: str  # transformers class loaded with from_pretrained
    vision: tuple[str, str, str]  # (tower attribute, pooling "pooler"|"cls", projection attribute or "")
    text: tuple[str, str, str]
    summary: str
    example: str  # a hub id, for docs and `vl2v teacher list`
    text_padding: str = "longest"  # "longest" or "max_length" (padded to the text context, as trained)
    text_attention_mask: bool = True  # False: the text tower was trained without a padding mask
    naflex: bool = False  # SigLIP 2 NaFlex: patchified pixels + attention mask + spatial shapes
    architectures: tuple[str, ...] = ()  # required config.architectures (one of), if not empty
    white_box: bool = True


FAMILIES: dict[str, HFFamily] = {f.name: f for f in (
    HFFamily("clip", ("clip",), "CLIPModel", ("vision_model", "pooler", "visual_projection"),
             ("text_model", "pooler", "text_projection"),
             "OpenAI CLIP and other CLIPModel checkpoints (contrastive projections)",
             "openai/clip-vit-base-patch16"),
    HFFamily("metaclip2", ("metaclip_2",), "MetaClip2Model", ("vision_model", "pooler", "visual_projection"),
             ("text_model", "pooler", "text_projection"),
             "MetaCLIP 2 (worldwide), CLIP architecture",
             "facebook/metaclip-2-worldwide-huge-quickgelu"),
    HFFamily("siglip", ("siglip",), "SiglipModel", ("vision_model", "pooler", ""), ("text_model", "pooler", ""),
             "SigLIP (and SigLIP 2 fixed-resolution checkpoints): sigmoid-loss towers, attention-pool heads",
             "google/siglip-base-patch16-224", text_padding="max_length", text_attention_mask=False),
    HFFamily("siglip2", ("siglip2",), "Siglip2Model", ("vision_model", "pooler", ""), ("text_model", "pooler", ""),
             "SigLIP 2 NaFlex: square inputs as patch sequences",
             "google/siglip2-base-patch16-naflex", text_padding="max_length", text_attention_mask=False, naflex=True),
    HFFamily("align", ("align",), "AlignModel", ("vision_model", "pooler", ""), ("text_model", "cls", "text_projection"),
             "ALIGN: EfficientNet image tower, BERT text tower",
             "kakaobrain/align-base"),
    HFFamily("flava", ("flava",), "FlavaModel", ("image_model", "cls", "image_projection"),
             ("text_model", "cls", "text_projection"),
             "FLAVA: unimodal encoders' CLS states through the contrastive projections",
             "facebook/flava-full"),
    HFFamily("blip", ("blip",), "BlipForImageTextRetrieval", ("vision_model", "cls", "vision_proj"),
             ("text_encoder", "cls", "text_proj"),
             "BLIP image-text retrieval checkpoints: the ITC projections (vision_proj / text_proj)",
             "Salesforce/blip-itm-base-coco", architectures=("BlipForImageTextRetrieval",)),
)}

_UNSUPPORTED_HINTS = {
    "blip-2": "BLIP-2 compares 32 Q-Former query embeddings per image with a max: not one image vector",
    "chinese_clip": "not wired up; CLIP-like, could be added like `clip`",
    "altclip": "not wired up; CLIP-like, could be added like `clip`",
}


def family_for_config(config: Any) -> HFFamily:
    """The family of a loaded ``PretrainedConfig`` or raise a clear :class:`TeacherError`."""
    mt = getattr(config, "model_type", None)
    for fam in FAMILIES.values():
        if mt in fam.model_types:
            archs = tuple(getattr(config, "architectures", None) or ())
            if fam.architectures and archs and not set(archs) & set(fam.architectures):
                raise TeacherError(
                    f"{fam.name} checkpoint with architecture {', '.join(archs)} has no image-text contrastive "
                    f"heads; use a {' or '.join(fam.architectures)} checkpoint (e.g. {fam.example})")
            return fam
    hint = _UNSUPPORTED_HINTS.get(str(mt), "")
    raise TeacherError(
        f"model type {mt!r} is not a supported transformers teacher family"
        + (f" ({hint})" if hint else "") + f"; supported: {', '.join(FAMILIES)} (see `vl2v teacher list`)")


# --------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class ImagePreprocess:
    """The processor's pixel normalisation as ``y = x * scale + shift`` on [0, 1] input, per channel."""

    size: int
    scale: tuple[float, float, float]
    shift: tuple[float, float, float]
    patch_size: int = 0  # NaFlex only
    max_num_patches: int = 0  # NaFlex only

    def describe(self) -> str:
        r = lambda v: tuple(round(float(a), 6) for a in v)  # noqa: E731
        extra = f";patches={self.patch_size}px-max{self.max_num_patches}" if self.patch_size else ""
        return f"input={self.size}px-shortest-centercrop;scale={r(self.scale)};shift={r(self.shift)}{extra}"


def _size_of(value: Any) -> tuple[int | None, int | None, int | None]:
    """(height, width, shortest_edge) from a processor size value (dict, SizeDict or int)."""
    if value is None:
        return None, None, None
    if isinstance(value, int):
        return value, value, None
    get = value.get if isinstance(value, dict) else lambda k, d=None: getattr(value, k, d)
    return get("height", None), get("width", None), get("shortest_edge", None)


def image_preprocess(image_processor: Any, family: HFFamily) -> ImagePreprocess:
    """Read size, rescale, offset, mean and std from a transformers image processor."""
    ip = image_processor
    if family.naflex:
        p, n = int(getattr(ip, "patch_size", 16) or 16), int(getattr(ip, "max_num_patches", 256) or 256)
        size = p * math.isqrt(n)
    else:
        size = None
        if getattr(ip, "do_center_crop", False):
            h, w, s = _size_of(getattr(ip, "crop_size", None))
            size = h if h is not None and h == w else s
            if h is not None and w is not None and h != w:
                raise TeacherError(f"non-square crop size {h}x{w} in the image processor: not supported")
        if size is None:
            h, w, s = _size_of(getattr(ip, "size", None))
            if h is not None and w is not None and h != w:
                raise TeacherError(f"non-square input size {h}x{w} in the image processor: not supported")
            size = h if h is not None else s
        if not size:
            raise TeacherError(f"cannot read the input size from image processor {type(ip).__name__}")
        p = n = 0
    rf = float(getattr(ip, "rescale_factor", 1 / 255)) if getattr(ip, "do_rescale", True) else 1.0
    offset = 1.0 if getattr(ip, "rescale_offset", False) and getattr(ip, "do_rescale", True) else 0.0
    scale, shift = [255.0 * rf] * 3, [-offset] * 3
    mean = getattr(ip, "image_mean", None) or (0.0, 0.0, 0.0)
    std = getattr(ip, "image_std", None) or (1.0, 1.0, 1.0)
    mean = [float(mean)] * 3 if isinstance(mean, (int, float)) else [float(m) for m in mean]
    std = [float(std)] * 3 if isinstance(std, (int, float)) else [float(s) for s in std]
    if getattr(ip, "do_normalize", True):
        scale = [a / s for a, s in zip(scale, std)]
        shift = [(b - m) / s for b, m, s in zip(shift, mean, std)]
    if getattr(ip, "include_top", False):  # EfficientNet processors divide by std once more
        scale = [a / s for a, s in zip(scale, std)]
        shift = [b / s for b, s in zip(shift, std)]
    return ImagePreprocess(int(size), tuple(scale), tuple(shift), p, n)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- towers
def _pool(out: Any, how: str) -> torch.Tensor:
    if how == "pooler":
        pooled = out.pooler_output if hasattr(out, "pooler_output") else out[1]
        return pooled.reshape(pooled.shape[0], -1)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    return hidden[:, 0, :]


class HFImageEncoder(nn.Module):
    """[B,3,S,S] in [0,1] -> unnormalised image embedding: the processor's normalisation, tower, pooling, projection.

    Holds only the image side of the model, so a copy of it can be fine-tuned (VL2V-SD).
    """

    def __init__(self, tower: nn.Module, pooling: str, projection: nn.Module | None, pre: ImagePreprocess) -> None:
        super().__init__()
        self.tower = tower
        self.projection = projection if projection is not None else nn.Identity()
        self.pooling = pooling
        self.image_size = pre.size
        self.patch_size = pre.patch_size
        self.max_num_patches = pre.max_num_patches
        self.register_buffer("scale", torch.tensor(pre.scale, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor(pre.shift, dtype=torch.float32).view(1, 3, 1, 1))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 1)
        return x * self.scale + self.shift

    def tower_inputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.normalise(x)
        if not self.patch_size:
            return {"pixel_values": x}
        # NaFlex: (C, nh, p, nw, p) -> (nh*nw, p*p*C), the image processor's patch order, padded to max patches
        b, c, h, w = x.shape
        p = self.patch_size
        nh, nw = h // p, w // p
        patches = x.reshape(b, c, nh, p, nw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, nh * nw, p * p * c)
        mask = torch.ones(b, nh * nw, dtype=torch.long, device=x.device)
        pad = self.max_num_patches - nh * nw
        if pad > 0:
            patches = F.pad(patches, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad))
        shapes = torch.tensor([[nh, nw]] * b, dtype=torch.long, device=x.device)
        return {"pixel_values": patches, "pixel_attention_mask": mask, "spatial_shapes": shapes}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.tower.parameters()).dtype
        inputs = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in self.tower_inputs(x.float()).items()}
        return self.projection(_pool(self.tower(**inputs, return_dict=True), self.pooling))


def _accepted(module: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inputs that ``module.forward`` names explicitly (a tokenizer may return more, e.g. token_type_ids)."""
    params = inspect.signature(module.forward).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return {k: v for k, v in inputs.items() if k in names}


# --------------------------------------------------------------------------- the teacher
def _dir_digest(path: Path) -> str:
    """SHA-256 over the files from_pretrained reads in a model directory (weights, configs, tokenizer)."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                   and p.suffix in (".safetensors", ".bin", ".json", ".txt", ".model", ".pt", ".pth"))
    if not any(p.suffix in (".safetensors", ".bin", ".pt", ".pth") for p in files):
        raise TeacherError(f"{path} has no weights file (*.safetensors or *.bin): is it a downloaded model folder?")
    return files_digest(path, files)


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class HFTeacher(Teacher):
    backend = "transformers"

    def __init__(self, model: str, revision: str | None = None, device: str = "cpu", batch_size: int = 64,
                 dtype: str = "float32", cache_dir: str | None = None) -> None:
        require("hf", "transformers")
        import transformers

        if not model:
            raise TeacherError("transformers teacher needs a model: transformers:<hub id or local directory>")
        if dtype not in _DTYPES:
            raise TeacherError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        path = Path(model).expanduser()
        local = path.is_dir()
        if not local and (model.startswith((".", "/", "~")) or path.exists()):
            raise TeacherError(f"{model} is not a model directory (expected config.json and weights inside)")
        if local and revision:
            raise TeacherError("revision= applies to hub ids, not to a local directory")
        source = str(path.resolve()) if local else model
        kw: dict[str, Any] = {"local_files_only": True} if local else {"revision": revision, "cache_dir": cache_dir}
        try:
            config = transformers.AutoConfig.from_pretrained(source, **kw)
        except Exception as exc:
            hint = (" (no config.json there?)" if local else
                    " (no network? download it first, e.g. `huggingface-cli download ID --local-dir DIR`, "
                    "and pass transformers:DIR)")
            raise TeacherError(f"cannot load the config of {model!r}{hint}: {exc}") from exc
        fam = family_for_config(config)
        self.family = fam
        try:
            cls = getattr(transformers, fam.model_class)
            hf = cls.from_pretrained(source, dtype=_DTYPES[dtype], **kw)
            processor = transformers.AutoProcessor.from_pretrained(source, **kw)
        except TeacherError:
            raise
        except Exception as exc:
            raise TeacherError(f"cannot load {fam.name} model or processor from {model!r}: {exc}") from exc
        image_processor = getattr(processor, "image_processor", None)
        tokenizer = getattr(processor, "tokenizer", None)
        if image_processor is None or tokenizer is None:
            raise TeacherError(f"{model!r}: the processor has no image processor and tokenizer "
                               f"(got {type(processor).__name__})")
        hf.eval()
        for p in hf.parameters():
            p.requires_grad_(False)
        self.hf = hf.to(self.device)
        self.tokenizer = tokenizer
        pre = image_preprocess(image_processor, fam)
        self.preprocess = pre
        vt, vpool, vproj = fam.vision
        self.encoder = HFImageEncoder(getattr(hf, vt), vpool, getattr(hf, vproj) if vproj else None, pre).to(self.device)
        tt, self._text_pool, tproj = fam.text
        self._text_tower = getattr(hf, tt)
        self._text_proj = getattr(hf, tproj) if tproj else nn.Identity()
        text_cfg = getattr(config, "text_config", None) or config
        self._context = int(getattr(text_cfg, "max_position_embeddings", 0) or 77)
        self.image_size = pre.size
        self.white_box = fam.white_box
        with torch.no_grad():
            try:
                img_dim = int(self.encoder(torch.zeros(1, 3, pre.size, pre.size, device=self.device)).shape[-1])
                txt_dim = int(self._encode_texts(["a"]).shape[-1])
            except Exception as exc:
                raise TeacherError(f"{fam.name} model {model!r} fails on a {pre.size}px image or a short text: {exc}") from exc
        if img_dim != txt_dim:
            raise TeacherError(f"{fam.name} model {model!r}: image ({img_dim}) and text ({txt_dim}) embedding sizes "
                               "differ, so images and texts are not in one space; not usable as a teacher")
        self.embed_dim = img_dim
        if local:
            weights = f"sha256:{_dir_digest(path.resolve())[:16]}"
            where = f"dir={path.resolve()}"
        else:
            commit = getattr(config, "_commit_hash", None)
            weights = f"commit:{commit}" if commit else "commit:unknown"
            where = f"id={model}"
        pad = "max" if fam.text_padding == "max_length" else "longest"
        self._identity = (f"transformers({fam.name};{where};revision={revision or 'default'};weights={weights};"
                          f"dtype={dtype};{pre.describe()};text={pad}{self._context}"
                          f"{'' if fam.text_attention_mask else '-nomask'}-{type(tokenizer).__name__})")

    # ----------------------------------------------------------- interface
    def _encode_images(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        fam = self.family
        if fam.text_padding == "max_length":
            tok = self.tokenizer(texts, padding="max_length", max_length=self._context, truncation=True, return_tensors="pt")
        else:
            tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self._context, return_tensors="pt")
        names = set(getattr(self.tokenizer, "model_input_names", ["input_ids", "attention_mask"]))
        inputs = {k: v.to(self.device) for k, v in tok.items() if k in names}
        if not fam.text_attention_mask:
            inputs.pop("attention_mask", None)
        inputs = _accepted(self._text_tower, inputs)
        out = self._text_tower(**inputs, return_dict=True)
        return self._text_proj(_pool(out, self._text_pool))

    def image_encoder(self) -> nn.Module:
        if not self.white_box:
            raise TeacherError(f"transformers {self.family.name} teacher exposes no trainable image tower")
        return self.encoder

    def to(self, device: torch.device | str) -> "HFTeacher":
        self.device = torch.device(device)
        self.hf.to(self.device)
        self.encoder.to(self.device)
        return self


# ------------------------------------------------------------------ the backend: --teacher transformers:HUB_ID|DIR
@config_dataclass
class HFOptions:
    """``--teacher-opt`` options of the ``transformers`` teacher."""

    revision: str | None = None
    batch_size: PosInt | None = None
    dtype: Literal["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"] | None = None
    cache_dir: str | None = None


@register_teacher("transformers", white_box=True, offline=False, options=HFOptions,
                  summary="Hugging Face CLIP/MetaCLIP2/SigLIP/SigLIP2/ALIGN/FLAVA/BLIP: transformers:HUB_ID or transformers:/local/dir")
def _transformers(spec: str | None = None, **opts: Any) -> Teacher:
    return HFTeacher(model=spec or "", **opts)
