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
``k=5`` or ``runtime=onnx`` (ONNX Runtime for the classifier) for ConSE. Each backend
declares them as a typed config dataclass (``options=``), so ``k=abc`` or an unknown
key is a one-line error naming the option before anything is loaded.
``blackbox=True`` wraps any teacher so that only the embed functions are reachable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal

from pydantic import Field

from vl2v.config import Fraction, NonNegFloat, NonNegInt, PosInt, config_dataclass, validated
from vl2v.errors import ConfigError
from vl2v.registry import Registry
from vl2v.teachers.base import Teacher, TeacherError


@dataclass(frozen=True)
class TeacherInfo:
    """One teacher backend: how to build it (``factory(spec, **options)``) and what `vl2v teacher list` says of it."""

    name: str
    factory: Callable[..., Teacher]
    summary: str
    white_box: bool  # the backend can hand VL2V-SD a differentiable image tower
    offline: bool = False  # its weights ship with vl2v's dependencies (no download, no local path)
    options: type | None = None  # a config_dataclass of its --teacher-opt options (None: passed on unchecked)
    # trained on the experiment's own splits (the privileged diagnostic): one target and one trial seed per
    # experiment, and the experiment binds it (teachers.privileged.bind_to_experiment) before it answers
    experiment_bound: bool = False

    def check_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` (``--teacher-opt`` text values) typed and range-checked by the backend's options class;
        only the keys given (the constructor's own defaults stay in force for the rest)."""
        if self.options is None or not options:
            return dict(options)
        try:
            typed = validated(self.options, options, what=f"--teacher-opt for teacher {self.name!r}")
        except TeacherError:
            raise
        except ConfigError as exc:
            raise TeacherError(str(exc)) from None
        return {k: getattr(typed, k) for k in options}


TEACHERS: Registry[TeacherInfo] = Registry("teacher")


def register_teacher(name: str, *, summary: str, white_box: bool, offline: bool = False,
                     options: type | None = None,
                     experiment_bound: bool = False) -> Callable[[Callable[..., Teacher]], Callable[..., Teacher]]:
    """Decorator: register ``factory(spec, **options) -> Teacher`` as backend ``name``; ``options``: the
    config dataclass that types its ``--teacher-opt`` options (see :func:`vl2v.config.config_dataclass`)."""

    def deco(factory: Callable[..., Teacher]) -> Callable[..., Teacher]:
        TEACHERS.register(name)(TeacherInfo(name, factory, summary, white_box, offline, options, experiment_bound))
        return factory

    return deco


# ------------------------------------------------------------------ each backend's --teacher-opt options
@config_dataclass
class ConSEOptions:
    k: Annotated[int, Field(ge=1, le=1000)] | None = None  # ImageNet classes mixed per image
    classifier: Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"] | None = None
    text_model: str | None = None
    label_template: str | None = None
    batch_size: PosInt | None = None
    runtime: Literal["auto", "torch", "onnx"] | None = None


@config_dataclass
class LiTOptions:
    batch_size: PosInt | None = None


@config_dataclass
class OpenCLIPOptions:
    batch_size: PosInt | None = None
    cache_dir: str | None = None
    preprocess: str | None = None


@config_dataclass
class HFOptions:
    revision: str | None = None
    batch_size: PosInt | None = None
    dtype: Literal["float32", "fp32", "float16", "fp16", "bfloat16", "bf16"] | None = None
    cache_dir: str | None = None


@config_dataclass
class RemoteOptions:
    api_key: str | None = None
    batch_size: PosInt | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    retries: NonNegInt | None = None
    backoff: NonNegFloat | None = None
    max_backoff: NonNegFloat | None = None
    budget: NonNegInt | None = None  # image queries this process may send
    max_wait: NonNegFloat | None = None  # longest 429 Retry-After waited out (s); longer: QueryBudgetExceeded


@register_teacher("conse", white_box=True, offline=True, options=ConSEOptions,
                  summary="ConSE: EfficientNet-Lite2 ImageNet probabilities x MiniLM class-name embeddings (offline, NOT CLIP)")
def _conse(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.conse import ConSETeacher

    if spec:
        opts.setdefault("classifier", spec)
    return ConSETeacher(**opts)


@register_teacher("lit", white_box=True, offline=True, options=LiTOptions,
                  summary="LiT: locked EfficientNet-Lite2 + a head trained on icon captions, mixed with ConSE "
                          "(lit or lit:NAME; build it first: vl2v teacher build NAME)")
def _lit(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.lit import LiTTeacher

    return LiTTeacher(spec, **opts)


@register_teacher("openclip", white_box=True, offline=False, options=OpenCLIPOptions,
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


@register_teacher("transformers", white_box=True, offline=False, options=HFOptions,
                  summary="Hugging Face CLIP/MetaCLIP2/SigLIP/SigLIP2/ALIGN/FLAVA/BLIP: transformers:HUB_ID or transformers:/local/dir")
def _transformers(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.hf import HFTeacher

    return HFTeacher(model=spec or "", **opts)


@register_teacher("remote", white_box=False, offline=False, options=RemoteOptions,
                  summary="a `vl2v serve` embedding service: remote:http://HOST:PORT (key: api_key=... or $VL2V_API_KEY; "
                          "batch_size, timeout, retries, backoff, budget)")
def _remote(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.remote import create_remote_teacher

    return create_remote_teacher(spec, **opts)


@config_dataclass
class PrivilegedOptions:
    alpha: Fraction | None = None  # weight of the privileged head: 0 = the base teacher, 1 = the head alone
    base: str | None = None  # the base teacher (default conse)
    cache: bool | None = None  # share tower outputs across experiments ($VL2V_HOME/cache/privileged-tower.sqlite)


@register_teacher("privileged", white_box=False, offline=True, options=PrivilegedOptions, experiment_bound=True,
                  summary="DIAGNOSTIC, never a default: a head trained on the TARGET domain's validation split (and "
                          "the sources' training splits) blended with a base teacher (conse): privileged:alpha=A; "
                          "one --target and one --seed per experiment")
def _privileged(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.privileged import create_privileged

    for part in filter(None, (p.strip() for p in (spec or "").split(","))):  # privileged:alpha=0.5
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in ("alpha", "base"):
            raise TeacherError(f"privileged teacher: bad spec part {part!r}; write privileged:alpha=A")
        opts.setdefault(key.strip(), value.strip())
    try:
        alpha = float(opts.pop("alpha", 0.5))
    except ValueError:
        raise TeacherError("privileged teacher: alpha must be a number in [0, 1]") from None
    base = str(opts.pop("base", None) or "conse")
    if base.split(":", 1)[0] == "privileged":
        raise TeacherError("privileged teacher: its base cannot be another privileged teacher")
    return create_privileged(create_teacher(base), alpha, **opts)


@dataclass(frozen=True)
class TeacherSpec:
    backend: str
    spec: str | None
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str, options: dict[str, Any] | None = None) -> "TeacherSpec":
        backend, _, rest = text.partition(":")
        TEACHERS.entry(backend)  # raises a clear error for unknown backends
        name = TEACHERS.canonical(backend)
        typed = teacher_info(name).check_options(options or {})
        return cls(name, rest or None, tuple(sorted(typed.items())))

    def __str__(self) -> str:
        return self.backend + (f":{self.spec}" if self.spec else "")


#: --teacher-opt keys that hold a secret: never written to a record (experiment.json, config.json, results)
SECRET_OPTIONS = frozenset({"api_key"})
#: what a record holds in place of a secret option's value
REDACTED = "<redacted>"


def public_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """``options`` as they may be recorded: secret values (an API key) replaced by :data:`REDACTED`."""
    return {k: REDACTED if k in SECRET_OPTIONS and v not in (None, "") else v for k, v in (options or {}).items()}


def create_teacher(text: str, blackbox: bool = False, **options: Any) -> Teacher:
    """The teacher ``text`` names, with its ``--teacher-opt`` options; a redacted secret read back from a record
    (an API key) is left out, so the backend takes it from its environment variable as usual."""
    options = {k: v for k, v in options.items() if not (k in SECRET_OPTIONS and v == REDACTED)}
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


# ------------------------------------------------------------------ vendor teachers (docs/vendors.md)
@config_dataclass
class VendorOptions:
    api_key: str | None = None  # default: the provider's environment variable (JINA_API_KEY, CO_API_KEY, ...)
    image_size: Annotated[int, Field(ge=16, le=4096)] | None = None  # input side; sent at most the vendor's limit
    image_format: Literal["png", "jpeg", "jpg"] | None = None
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] | None = None
    batch_size: PosInt | None = None  # images per request (capped at the vendor's documented limit)
    text_batch_size: PosInt | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    retries: NonNegInt | None = None
    backoff: NonNegFloat | None = None
    max_backoff: NonNegFloat | None = None
    budget_usd: NonNegFloat | None = None  # refuse a call whose estimated cost would pass it (before sending)
    price_image: NonNegFloat | None = None  # USD per image query (replaces prices.json)
    price_text: NonNegFloat | None = None  # USD per text query (replaces prices.json)
    base_url: str | None = None  # another endpoint of the same API (a proxy, a regional host)


@register_teacher("vendor", white_box=False, offline=False, options=VendorOptions,
                  summary="a vendor's multimodal embedding API, pay per query: vendor:PROVIDER:MODEL with jina, cohere, "
                          "voyage or nomic (key: $JINA_API_KEY, $CO_API_KEY, $VOYAGE_API_KEY, $NOMIC_API_KEY or "
                          "api_key=...; budget_usd, price_image, price_text, image_size, image_format)")
def _vendor(spec: str | None = None, **opts: Any) -> Teacher:
    from vl2v.teachers.vendors import create_vendor_teacher

    return create_vendor_teacher(spec, **opts)
