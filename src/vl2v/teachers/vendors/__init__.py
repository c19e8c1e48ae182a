"""Vendor teachers: commercial multimodal embedding APIs as pay-per-query teachers.

``--teacher vendor:PROVIDER:MODEL``, e.g. ``vendor:jina:jina-clip-v2``, ``vendor:cohere:embed-v4.0``,
``vendor:voyage:voyage-multimodal-3``, ``vendor:nomic:nomic-embed-vision-v1.5``. The machinery they
share (views, batching, retries, errors, prices, the USD budget) is in :mod:`.base`; each provider's
module says which API version it follows and where that is documented. See docs/vendors.md.
"""

from __future__ import annotations

import importlib
from typing import Any

from vl2v.teachers.base import TeacherError

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
