"""The wire protocol of the embedding service, shared by the server and the remote teacher.

It lives with the teachers because the client (``vl2v.teachers.remote``) needs
it and teachers never import ``vl2v.serving`` (the service, which imports
teachers, does). Kept free of FastAPI and httpx imports. docs/serving.md
describes the API for people.
"""

from __future__ import annotations

import base64
import re

import numpy as np

API_VERSION = "v1"
MODEL_PATH = "/v1/model"
IMAGES_PATH = "/v1/embeddings/images"
TEXTS_PATH = "/v1/embeddings/texts"
USAGE_PATH = "/v1/usage"
HEALTH_PATH = "/v1/health"

#: client-chosen id that makes a POST idempotent (same key + same id -> same stored answer, billed once)
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: "true" on a response that is a stored answer to an earlier request with the same id (not billed again)
REPLAYED_HEADER = "Idempotent-Replayed"
API_KEY_HEADER = "X-API-Key"
IDEMPOTENCY_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
IDEMPOTENCY_KEY_PATTERN = IDEMPOTENCY_KEY_RE.pattern

#: image formats the service decodes, by magic bytes
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
IMAGE_FORMATS = ("png", "jpeg")

ENCODINGS = ("float", "base64")


def encode_vector(v: np.ndarray) -> str:
    """One embedding as base64 of little-endian float32 (exact, ~4/3 x 4 bytes per value)."""
    return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")


def decode_vector(s: str, dim: int) -> np.ndarray:
    raw = base64.b64decode(s, validate=True)
    if len(raw) != 4 * dim:
        raise ValueError(f"embedding has {len(raw) // 4} values, expected {dim}")
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def json_body_overhead(n_items: int) -> int:
    """Upper bound of the JSON bytes around ``n_items`` strings in a request body."""
    return 64 + 4 * n_items
