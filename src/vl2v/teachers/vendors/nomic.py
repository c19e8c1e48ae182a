"""Nomic: ``--teacher vendor:nomic:nomic-embed-vision-v1.5`` (or ``-v1``); key from ``NOMIC_API_KEY``.

Nomic Embed Vision is aligned to Nomic Embed Text (the vision model was trained into the text model's
space): images go to the vision model, texts to the text model of the same version.
Embedding API v1, as documented on 2026-12-05; docs pages
https://docs.nomic.ai/reference/endpoints/nomic-embed-vision (images),
https://docs.nomic.ai/reference/endpoints/nomic-embed-text (texts),
https://docs.nomic.ai/atlas/models/image-embedding (768-d) and
https://docs.nomic.ai/api/getting-started/rate-limits (1,200 requests per 5 minutes per IP; 429 with
Retry-After).

Requests: ``POST https://api-atlas.nomic.ai/v1/embedding/image`` as ``multipart/form-data`` with a
``model`` field and one ``images`` file part per image (PNG, JPEG or WebP), and ``POST
/v1/embedding/text`` with ``{"model": "nomic-embed-text-v1.5", "texts": [...], "task_type":
"search_query"}`` (class prompts are queries against images); both with ``Authorization: Bearer KEY``;
answers ``{"embeddings": [[...], ...], "usage": {...}}``. No per-request item limit is documented: we
send at most 16 images (JPEG quality 95 at 224 px, the vision model's input side) and 64 texts.
No price was found in the docs: pass ``price_image=`` / ``price_text=`` to estimate or cap spending.
"""

from __future__ import annotations

from typing import Any

from vl2v.teachers.vendors.base import ModelSpec, VendorTeacher


class NomicTeacher(VendorTeacher):
    provider = "nomic"
    env_vars = ("NOMIC_API_KEY",)
    base_url = "https://api-atlas.nomic.ai"
    api_version = "v1"
    docs_url = "https://docs.nomic.ai/reference/endpoints/nomic-embed-vision"
    models = {
        "nomic-embed-vision-v1.5": ModelSpec(embed_dim=768, native_side=224, max_side=224,
                                             text_model="nomic-embed-text-v1.5"),
        "nomic-embed-vision-v1": ModelSpec(embed_dim=768, native_side=224, max_side=224,
                                           text_model="nomic-embed-text-v1"),
    }
    default_format = "jpeg"
    max_images_per_request = 16
    max_texts_per_request = 64
    quota_words = r"quota|credits?|billing|payment|insufficient"
    settings = "task_type=search_query"

    def _image_request(self, chunk: list[bytes]) -> dict[str, Any]:
        ext = "png" if self.image_format == "png" else "jpg"
        files = [("images", (f"{i}.{ext}", c, self._mime())) for i, c in enumerate(chunk)]
        return {"url": "/v1/embedding/image", "data": {"model": self.model}, "files": files}

    def _text_request(self, texts: list[str]) -> dict[str, Any]:
        return {"url": "/v1/embedding/text", "json": {"model": self.spec.text_model, "texts": texts,
                                                      "task_type": "search_query"}}

    def _vectors(self, data: Any, kind: str) -> list[Any]:
        return list(data["embeddings"])
