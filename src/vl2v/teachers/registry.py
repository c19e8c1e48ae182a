"""Teacher registry: ``backend[:spec]`` strings -> :class:`Teacher` instances.

Examples::

    conse                               offline ConSE teacher (default)
    lit  /  lit:NAME  /  lit:/path      offline LiT teacher built by `vl2v teacher build NAME`
    openclip:ViT-B-16:openai            OpenAI CLIP ViT-B/16 via open_clip (downloads once)
    openclip:ViT-B-16:/path/model.pt    a local open_clip checkpoint
    openclip:ViT-B-16:none              random weights (tests, speed)
    openclip:local-dir:/path            a downloaded open_clip Hub folder (offline)
    transformers:google/siglip-base-patch16-224   a Hugging Face model (hub id or local dir)

Options (``--teacher-opt key=value``) go to the backend's constructor, e.g.
``k=5`` or ``runtime=onnx`` (ONNX Runtime for the classifier) for ConSE.
``blackbox=True`` wraps any teacher so that only the embed functions are reachable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vl2v.registry import Registry
from vl2v.teachers.base import Teacher, TeacherError


@dataclass(frozen=True)
class TeacherInfo:
    """One teacher backend: how to build it (``factory(spec, **options)``) and what `vl2v teachers` says of it."""

    name: str
    factory: Callable[..., Teacher]
    summary: str
    white_box: bool  # the backend can hand VL2V-SD a differentiable image tower
    offline: bool = False  # its weights ship with vl2v's dependencies (no download, no local path)


TEACHERS: Registry[TeacherInfo] = Registry("teacher")


def register_teacher(name: str, *, summary: str, white_box: bool,
                     offline: bool = False) -> Callable[[Callable[..., Teacher]], Callable[..., Teacher]]:
    """Decorator: register ``factory(spec, **options) -> Teacher`` as backend ``name``."""

    def deco(factory: Callable[..., Teacher]) -> Callable[..., Teacher]:
        TEACHERS.register(name)(TeacherInfo(name, factory, summary, white_box, offline))
        return factory

    return deco


@register_teacher("conse", white_box=True, offline=True,
                  summary="ConSE: EfficientNet-Lite2 ImageNet probabilities x MiniLM class-name embeddings (offline, NOT CLIP)")
def _conse(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.conse import ConSETeacher

    if spec:
        opts.setdefault("classifier", spec)
    for key in ("k", "batch_size"):
        if key in opts:
            opts[key] = int(opts[key])
    return ConSETeacher(**opts)


@register_teacher("lit", white_box=True, offline=True,
                  summary="LiT: locked EfficientNet-Lite2 + a head trained on icon captions, mixed with ConSE "
                          "(lit or lit:NAME; build it first: vl2v teacher build NAME)")
def _lit(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.lit import LiTTeacher

    if "batch_size" in opts:
        opts["batch_size"] = int(opts["batch_size"])
    return LiTTeacher(spec, **opts)


@register_teacher("openclip", white_box=True, offline=False,
                  summary="any open_clip model: openclip:MODEL:TAG, openclip:MODEL:/path/to/checkpoint or openclip:local-dir:/path")
def _openclip(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.openclip import OpenCLIPTeacher

    model, pretrained = "ViT-B-16", "openai"
    if spec and spec.startswith(("local-dir:", "hf-hub:")):
        model, pretrained = spec, None
    elif spec:
        parts = spec.split(":", 1)
        model = parts[0]
        if len(parts) > 1:
            pretrained = parts[1]
    return OpenCLIPTeacher(model=model, pretrained=pretrained, **opts)


@register_teacher("transformers", white_box=True, offline=False,
                  summary="Hugging Face CLIP/MetaCLIP2/SigLIP/SigLIP2/ALIGN/FLAVA/BLIP: transformers:HUB_ID or transformers:/local/dir")
def _transformers(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.hf import HFTeacher

    if "batch_size" in opts:
        opts["batch_size"] = int(opts["batch_size"])
    return HFTeacher(model=spec or "", **opts)


@register_teacher("remote", white_box=False, offline=False,
                  summary="a `vl2v serve` embedding service: remote:http://HOST:PORT (key: api_key=... or $VL2V_API_KEY; "
                          "batch_size, timeout, retries, backoff, budget)")
def _remote(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.remote import create_remote_teacher

    return create_remote_teacher(spec, **opts)


@dataclass(frozen=True)
class TeacherSpec:
    backend: str
    spec: str | None
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str, options: dict[str, Any] | None = None) -> "TeacherSpec":
        backend, _, rest = text.partition(":")
        TEACHERS.entry(backend)  # raises a clear error for unknown backends
        return cls(TEACHERS.canonical(backend), rest or None, tuple(sorted((options or {}).items())))

    def __str__(self) -> str:
        return self.backend + (f":{self.spec}" if self.spec else "")


def create_teacher(text: str, blackbox: bool = False, **options: Any) -> Teacher:
    spec = TeacherSpec.parse(text, options)
    try:
        teacher = teacher_info(spec.backend).factory(spec.spec, **dict(spec.options))
    except TypeError as exc:
        raise TeacherError(f"bad options for teacher {text!r}: {exc}") from exc
    if blackbox:
        from vl2v.teachers.blackbox import BlackBoxTeacher

        teacher = BlackBoxTeacher(teacher)
    return teacher


def teacher_info(name: str) -> TeacherInfo:
    info = TEACHERS.get(name)
    if not isinstance(info, TeacherInfo):
        raise TypeError(f"teacher {name!r} was registered as {type(info).__name__}, not TeacherInfo: "
                        "register backends with vl2v.teachers.registry.register_teacher")
    return info


def list_teachers() -> list[TeacherInfo]:
    return [teacher_info(name) for name in TEACHERS.names()]
