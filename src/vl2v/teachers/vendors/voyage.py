"""Voyage AI: ``--teacher vendor:voyage:voyage-multimodal-3`` (or ``voyage-multimodal-3.5``); key from ``VOYAGE_API_KEY``.

Multimodal embeddings API v1, as documented on 2026-12-05; docs pages
https://docs.voyageai.com/docs/multimodal-embeddings (models, limits) and the endpoint reference
https://www.mongodb.com/docs/api/doc/atlas-embedding-and-reranking-api/operation/operation-createmultimodalembedding
(request format); prices https://docs.voyageai.com/pricing.

Request: ``POST https://api.voyageai.com/v1/multimodalembeddings`` with ``Authorization: Bearer KEY``
and ``{"model": M, "inputs": [{"content": [{"type": "image_base64", "image_base64": DATA_URI}]}, ...],
"input_type": "document"}`` (texts: ``{"type": "text", "text": T}`` with ``"input_type": "query"``:
class prompts are queries against image documents); answer ``{"object": "list", "data":
[{"object": "embedding", "embedding": [...], "index": i}], "model": M, "usage": {"text_tokens": ...,
"image_pixels": ..., "total_tokens": ...}}``. Limits: at most 1,000 inputs and 320,000 tokens per
request (an image counts one token per 560 pixels), an image of at most 16 million pixels and 20 MB,
PNG/JPEG/WebP/GIF as a data URL. Images under 50,000 pixels are upscaled and those over 2 million
downsampled (and billed so): the default view is 224 px PNG (50,176 pixels), the largest 1,414 px.
We send at most 64 images and 128 texts per request. Errors: 401 bad key, 429 rate limit, 5xx.
"""

from __future__ import annotations

from typing import Any

from vl2v.teachers.vendors.base import ModelSpec, VendorTeacher


class VoyageTeacher(VendorTeacher):
    provider = "voyage"
    env_vars = ("VOYAGE_API_KEY",)
    base_url = "https://api.voyageai.com"
    api_version = "v1"
    docs_url = "https://docs.voyageai.com/docs/multimodal-embeddings"
    models = {
        "voyage-multimodal-3": ModelSpec(embed_dim=1024, native_side=224, max_side=1414),
        "voyage-multimodal-3.5": ModelSpec(embed_dim=1024, native_side=224, max_side=1414),
    }
    default_format = "png"
    max_images_per_request = 64
    max_texts_per_request = 128
    max_image_bytes = 20_000_000
    max_request_bytes = 16 * 2**20
    settings = "input_type=document|query"
    path = "/v1/multimodalembeddings"

    def _image_request(self, chunk: list[bytes]) -> dict[str, Any]:
        inputs = [{"content": [{"type": "image_base64", "image_base64": self._data_uri(c)}]} for c in chunk]
        return {"url": self.path, "json": {"model": self.model, "inputs": inputs, "input_type": "document"}}

    def _text_request(self, texts: list[str]) -> dict[str, Any]:
        inputs = [{"content": [{"type": "text", "text": t}]} for t in texts]
        return {"url": self.path, "json": {"model": self.model, "inputs": inputs, "input_type": "query"}}

    def _vectors(self, data: Any, kind: str) -> list[Any]:
        rows = sorted(data["data"], key=lambda d: int(d["index"]))
        return [d["embedding"] for d in rows]
