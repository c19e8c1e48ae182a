"""Vendor teachers: commercial multimodal embedding APIs as pay-per-query teachers.

``--teacher vendor:PROVIDER:MODEL``, e.g. ``vendor:jina:jina-clip-v2``, ``vendor:cohere:embed-v4.0``,
``vendor:voyage:voyage-multimodal-3``, ``vendor:nomic:nomic-embed-vision-v1.5``. The machinery they
share (views, batching, retries, errors, prices, the USD budget) is in :mod:`.base`; each provider's
module says which API version it follows and where that is documented. See docs/vendors.md.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any, Literal

from pydantic import Field

from vl2v.config import NonNegFloat, NonNegInt, PosInt, config_dataclass
from vl2v.teachers.base import Teacher, TeacherError
from vl2v.teachers.registry import register_teacher

#: provider -> "module:class" (imported only when used: httpx and tenacity are the 'vendors' extra)
PROVIDERS: dict[str, str] = {
    "jina": "vl2v.teachers.vendors.jina:JinaTeacher",
    "cohere": "vl2v.teachers.vendors.cohere:CohereTeacher",
    "voyage": "vl2v.teachers.vendors.voyage:VoyageTeacher",
    "nomic": "vl2v.teachers.vendors.nomic:NomicTeacher",
}


def provider_class(name: str) -> type:
    """The teacher class of provider ``name`` (a one-line TeacherError naming the known ones otherwise)."""
    if name not in PROVIDERS:
        raise TeacherError(f"unknown vendor {name!r}; known: {', '.join(PROVIDERS)} (--teacher vendor:PROVIDER:MODEL)")
    module, _, cls = PROVIDERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def create_vendor_teacher(spec: str | None, **opts: Any):
    """``spec`` = ``PROVIDER:MODEL`` -> that provider's teacher, built with ``opts`` (the --teacher-opt values)."""
    provider, _, model = (spec or "").partition(":")
    if not provider or not model:
        raise TeacherError(f"the vendor teacher needs PROVIDER:MODEL, e.g. --teacher vendor:jina:jina-clip-v2; got "
                           f"{'vendor:' + spec if spec else 'vendor'!r}; providers: {', '.join(PROVIDERS)}")
    return provider_class(provider)(model, **opts)


# ------------------------------------------------------------------ the backend: --teacher vendor:PROVIDER:MODEL
@config_dataclass
class VendorOptions:
    """``--teacher-opt`` options of the ``vendor`` teacher (docs/vendors.md)."""

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
    return create_vendor_teacher(spec, **opts)
