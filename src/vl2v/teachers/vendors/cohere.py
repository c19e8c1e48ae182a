"""Cohere: ``--teacher vendor:cohere:embed-v4.0`` (or ``embed-english-v3.0``, ``embed-multilingual-v3.0``).

Key from ``CO_API_KEY`` (Cohere's SDK's variable) or ``COHERE_API_KEY``. Embed API v2, as documented
on 2026-12-05; docs page https://docs.cohere.com/embed-reference ("Embed API (v2)"); errors
https://docs.cohere.com/errors-reference; image support of v3 models
https://docs.cohere.com/changelog/embed-v3-is-multimodal.

Request: ``POST https://api.cohere.com/v2/embed`` with ``Authorization: Bearer KEY`` and
``{"model": M, "input_type": "image", "embedding_types": ["float"], "images": [DATA_URI]}`` for an
image, ``{"model": M, "input_type": "search_query", "embedding_types": ["float"], "texts": [...],
"truncate": "END"}`` for texts (class prompts are queries against images); answer
``{"id": ..., "embeddings": {"float": [[...], ...]}, "texts": [...], "images": [...], "meta":
{"api_version": {...}, "billed_units": {...}}}``. Limits: 1 image per call (``images``), 96 texts per
call, an image of at most 5 MB as a ``data:image/png|jpeg|webp|gif;base64,`` URI (we keep the base64
under 5,000,000 bytes). Errors: 401 invalid or expired key, 402 billing limit reached (the quota),
429 rate limit (a trial key is also limited to 1,000 calls a month: that 429 is the quota), 400
invalid request. Embed v4 downsamples images over 2,458,624 pixels (1,568 px square): the largest
side sent; the default view is 512 px PNG.
"""

from __future__ import annotations

from typing import Any

from vl2v.teachers.vendors.base import ModelSpec, VendorTeacher


class CohereTeacher(VendorTeacher):
    provider = "cohere"
    env_vars = ("CO_API_KEY", "COHERE_API_KEY")
    base_url = "https://api.cohere.com"
    api_version = "v2"
    docs_url = "https://docs.cohere.com/embed-reference"
    models = {
        "embed-v4.0": ModelSpec(embed_dim=1536, native_side=512, max_side=1568),
        "embed-english-v3.0": ModelSpec(embed_dim=1024, native_side=512, max_side=1024),
        "embed-multilingual-v3.0": ModelSpec(embed_dim=1024, native_side=512, max_side=1024),
    }
    default_format = "png"
    max_images_per_request = 1
    max_texts_per_request = 96
    max_image_bytes = 5_000_000 * 3 // 4  # the base64 of the data URI stays under the documented 5 MB
    quota_words = r"billing|payment|(per|a|/) ?month|monthly|quota"
    settings = "input_type=image|search_query;embedding_types=float"
    path = "/v2/embed"

    def _image_request(self, chunk: list[bytes]) -> dict[str, Any]:
        return {"url": self.path, "json": {"model": self.model, "input_type": "image", "embedding_types": ["float"],
                                           "images": [self._data_uri(c) for c in chunk]}}

    def _text_request(self, texts: list[str]) -> dict[str, Any]:
        return {"url": self.path, "json": {"model": self.model, "input_type": "search_query",
                                           "embedding_types": ["float"], "texts": texts, "truncate": "END"}}

    def _vectors(self, data: Any, kind: str) -> list[Any]:
        return list(data["embeddings"]["float"])
