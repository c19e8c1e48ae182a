"""Jina AI: ``--teacher vendor:jina:jina-clip-v2`` (or ``jina-clip-v1``); key from ``JINA_API_KEY``.

API v1, as documented on 2026-12-05; docs page https://api.jina.ai/openapi.json (the "Jina Search
Foundation API" OpenAPI description: auth, rate limits, error codes) and the models' pages
https://jina.ai/news/jina-clip-v2-multilingual-multimodal-embeddings-for-text-and-images (512x512
input, 1,024-d, Matryoshka down to 64) and https://jina.ai/models/jina-clip-v1 (224x224, 768-d).

Request: ``POST https://api.jina.ai/v1/embeddings`` with ``Authorization: Bearer KEY`` and
``{"model": M, "input": [{"image": BASE64} | {"text": T}, ...], "normalized": true,
"embedding_type": "float"}``; answer ``{"data": [{"index": i, "embedding": [...]}, ...],
"usage": {"total_tokens": N}}``. Errors: 401 ``AUTH_INVALID_API_KEY``, 403
``AUTHZ_INSUFFICIENT_BALANCE`` / ``AUTHZ_RESOURCE_LIMIT_EXCEEDED`` (the quota), 400
``INPUT_MODEL_NOT_FOUND``, 429 (rate limit: free tier 500 requests and 1M tokens a minute).
No per-request item or byte limit is documented there: we send at most 32 images (JPEG, quality 95,
at the model's own side, 512 or 224 px) and 8 MiB per request, and 256 texts.
"""

from __future__ import annotations

import base64
from typing import Any

from vl2v.teachers.vendors.base import ModelSpec, VendorTeacher


class JinaTeacher(VendorTeacher):
    provider = "jina"
    env_vars = ("JINA_API_KEY",)
    base_url = "https://api.jina.ai"
    api_version = "v1"
    docs_url = "https://api.jina.ai/openapi.json"
    models = {
        "jina-clip-v2": ModelSpec(embed_dim=1024, native_side=512, max_side=512),
        "jina-clip-v1": ModelSpec(embed_dim=768, native_side=224, max_side=224),
    }
    default_format = "jpeg"
    max_images_per_request = 32
    max_texts_per_request = 256
    max_request_bytes = 8 * 2**20
    quota_words = r"INSUFFICIENT_BALANCE|RESOURCE_LIMIT_EXCEEDED|insufficient (account )?balance|resource limit|quota"
    path = "/v1/embeddings"

    def _body(self, items: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": self.model, "input": items, "normalized": True, "embedding_type": "float"}

    def _image_request(self, chunk: list[bytes]) -> dict[str, Any]:
        return {"url": self.path, "json": self._body([{"image": base64.b64encode(c).decode("ascii")} for c in chunk])}

    def _text_request(self, texts: list[str]) -> dict[str, Any]:
        return {"url": self.path, "json": self._body([{"text": t} for t in texts])}

    def _vectors(self, data: Any, kind: str) -> list[Any]:
        rows = sorted(data["data"], key=lambda d: int(d["index"]))
        return [d["embedding"] for d in rows]
