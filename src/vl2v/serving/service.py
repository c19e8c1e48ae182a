"""``vl2v serve``: any teacher as a pay-per-query HTTP embedding API (FastAPI on uvicorn).

Endpoints (all under ``/v1``; docs/serving.md has the details)::

    GET  /v1/health              liveness, no key needed
    GET  /v1/model               name, identity, embed_dim, image_size, limits
    POST /v1/embeddings/images   {"images": [base64 PNG/JPEG, ...], "encoding": "float"|"base64"}
    POST /v1/embeddings/texts    {"texts": ["a photo of a dog", ...], "encoding": ...}
    GET  /v1/usage               the calling key's metered usage, limits, and usage per quota window

Every ``/v1`` route except health needs an API key (``Authorization: Bearer``
or ``X-API-Key``). A key may have quotas (image and text queries per window,
or prepaid) and a rate limit (keys file, :mod:`vl2v.serving.keys`): a request
that would pass one is refused whole with 429, a ``Retry-After`` header (except
for an exhausted prepaid balance) and the reason in the JSON error body. Requests pass a gate (an ASGI middleware) that checks the
key, the media type and the body size *before* FastAPI parses anything. A POST
with an ``Idempotency-Key`` header is answered once and billed once: a retry
with the same key and id gets the stored answer (``Idempotent-Replayed: true``).
Client mistakes are 4xx JSON errors ``{"error": {"status", "code", "message"}}``;
5xx means the server or the teacher failed, and nothing is billed for it.

The service writes only under its data directory (``usage.sqlite``: the
ledger, per-key totals and stored answers); it does not write bytecode caches,
temporary files or uploads anywhere.
"""


import hashlib
import json
import logging
import math
import os
import threading
import time
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

from vl2v.utils.extras import require

require("serve", "fastapi", "uvicorn")  # a one-line error naming the extra, not a bare ImportError

import anyio  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fastapi import FastAPI, Header, Request, Security  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import Response  # noqa: E402
from fastapi.security import APIKeyHeader, HTTPBearer  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402
from starlette.datastructures import Headers  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from vl2v import __version__  # noqa: E402
from vl2v.config import NonNegFloat, PosInt, config_dataclass  # noqa: E402
from vl2v.serving import KEYS_FILE, confine_writes  # noqa: E402
from vl2v.serving.images import ImageLimits, ImageRejected, b64_image, decode_batch  # noqa: E402
from vl2v.serving.keys import KeyRing  # noqa: E402
from vl2v.serving.meter import USAGE_DB, Admission, QuotaRefused, RateLimiter, UsageLedger  # noqa: E402
from vl2v.teachers.base import Teacher, check_embeddings  # noqa: E402
from vl2v.teachers.wire import (  # noqa: E402
    API_KEY_HEADER,
    API_VERSION,
    HEALTH_PATH,
    IDEMPOTENCY_HEADER,
    IDEMPOTENCY_KEY_PATTERN,
    IMAGE_FORMATS,
    IMAGES_PATH,
    MODEL_PATH,
    REPLAYED_HEADER,
    TEXTS_PATH,
    USAGE_PATH,
    encode_vector,
)

log = logging.getLogger("vl2v.serve")



@config_dataclass
class ServiceConfig:
    """The embedding service's settings (``vl2v serve`` flags); construct with :func:`vl2v.config.validated` for
    one readable error (a direct call raises pydantic's ``ValidationError``, a ``ValueError``)."""

    data_dir: Path
    keys_file: Path | None = None  # default: DATA_DIR/keys.txt
    max_batch_images: PosInt = 64
    max_batch_texts: PosInt = 256
    max_text_chars: PosInt = 2000
    max_request_bytes: PosInt = 32 * 1024 * 1024
    max_image_pixels: PosInt = 4096 * 4096
    max_request_pixels: PosInt = 64 * 1024 * 1024
    idempotency_ttl_s: NonNegFloat = 24 * 3600.0
    body_timeout_s: NonNegFloat = 60.0  # a client must finish sending its body within this (slow uploads -> 408)
    decode_workers: PosInt = field(default_factory=lambda: max(1, os.cpu_count() or 1))
    inflight_wait_s: NonNegFloat = 600.0  # a retry waits this long for the same request still being computed

    def __post_init__(self) -> None:
        self.keys_file = Path(self.keys_file) if self.keys_file else self.data_dir / KEYS_FILE

    def limits(self) -> dict[str, int]:
        return {"max_batch_images": self.max_batch_images, "max_batch_texts": self.max_batch_texts,
                "max_text_chars": self.max_text_chars, "max_request_bytes": self.max_request_bytes,
                "max_image_pixels": self.max_image_pixels, "max_request_pixels": self.max_request_pixels}


# --------------------------------------------------------------------------- errors
class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.extra = extra or {}


def _error_body(status: int, code: str, message: str, extra: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"error": {"status": status, "code": code, "message": message, **(extra or {})}}).encode()


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None,
                    extra: dict[str, Any] | None = None) -> Response:
    return Response(_error_body(status, code, message, extra), status_code=status, media_type="application/json",
                    headers=headers)


def _refusal(r: QuotaRefused) -> ApiError:
    """A quota or rate-limit refusal as its HTTP error: 429 (413 for a batch larger than a window's quota)."""
    headers = {} if r.retry_after is None else {"Retry-After": str(max(1, math.ceil(r.retry_after)))}
    status = 413 if r.reason == "batch_over_quota" else 429
    return ApiError(status, r.reason, r.message(), headers, r.body())


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
                 406: "not_acceptable", 408: "request_timeout", 409: "conflict", 413: "request_too_large",
                 415: "unsupported_media_type", 422: "invalid_request", 429: "too_many_requests"}


class ErrorDetail(BaseModel):
    status: int
    code: str
    message: str
    # a quota or rate-limit refusal (429; 413 batch_over_quota) says which, and when to retry
    reason: Literal["quota_exceeded", "prepaid_exhausted", "rate_limited", "batch_over_quota"] | None = None
    kind: Literal["image", "text", "requests"] | None = None
    limit: float | None = Field(None, description="the quota (queries per period) or the rate (requests per period)")
    used: int | None = Field(None, description="queries counted in the window (billed or being answered)")
    requested: int | None = None
    period: Literal["minute", "hour", "day", "prepaid", "second"] | None = None
    burst: int | None = None
    retry_after: float | None = Field(None, description="seconds until the request can fit (absent: it will not)")
    resets_at: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {401: "missing or unknown API key", 408: "request body not received in time",
            409: "Idempotency-Key reused with a different request", 413: "request, batch, text or image too large",
            415: "body is not JSON, or an image is not PNG/JPEG", 422: "malformed body or undecodable image",
            429: "a quota or the rate limit would be passed (reason, Retry-After); nothing billed",
            500: "the teacher failed (nothing billed)"}
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}


# --------------------------------------------------------------------------- answers (OpenAPI models)
class EmbeddingsResponse(BaseModel):
    object: Literal["embeddings"]
    model: str = Field(description="the teacher's identity string")
    embed_dim: int
    count: int
    encoding: Literal["float", "base64"]
    request_id: str | None
    embeddings: list[list[float]] | list[str]


class ModelInfo(BaseModel):
    name: str
    identity: str
    embed_dim: int
    image_size: int
    api_version: str
    image_formats: list[str]
    limits: dict[str, int]


class KeyLimitsInfo(BaseModel):
    images: str | None = Field(description="image-query quota, e.g. 1000/day or 50000/prepaid; null: none")
    texts: str | None = Field(description="text-query quota; null: none")
    rate: str | None = Field(description="embedding requests per second or minute, e.g. 5/s; null: none")
    burst: int | None


class UsagePeriod(BaseModel):
    period: Literal["minute", "hour", "day", "total"] = Field(
        description="a quota window (the current one), or total: all time (a prepaid quota lives here)")
    window_start: str | None
    resets_at: str | None
    image_queries: int
    text_queries: int
    image_quota: int | None
    image_remaining: int | None
    text_quota: int | None
    text_remaining: int | None


class Usage(BaseModel):
    key: str
    image_queries: int
    text_queries: int
    requests: int
    replays: int = Field(description="retries answered from a stored answer, not billed")
    bytes_received: int
    first_request_at: str | None
    last_request_at: str | None
    limits: KeyLimitsInfo
    periods: list[UsagePeriod] = Field(description="queries billed, quota and remaining, per period")


class Health(BaseModel):
    status: Literal["ok"]
    api_version: str


# --------------------------------------------------------------------------- the gate
class _Gate:
    """Pure ASGI middleware: API key, media type and a bounded body read, before any parsing.

    The body is read here (at most ``max_request_bytes``), hashed for
    idempotency, and replayed to the app. An over-size body is drained up to a
    cap before answering 413, so an ordinary HTTP client sees the 413 instead
    of a reset connection.
    """

    def __init__(self, app: Any, service: "EmbeddingService") -> None:
        self.app, self.service = app, service
        self.max_bytes = service.config.max_request_bytes
        self.drain_cap = self.max_bytes + 64 * 1024 * 1024  # drain (read and drop) at most this much

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        path, method = scope["path"], scope["method"]
        state = scope.setdefault("state", {})
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or len(declared) > 18):
            await self._answer(send, 400, "bad_request", "bad Content-Length header", close=True)
            return
        if path.startswith("/v1/") and path != HEALTH_PATH:
            name, (code, message) = self.service.authenticate(headers)
            if name is None:  # read (and drop) at most a little of an unauthenticated body
                await self._reject(receive, send, 401, code, message, cap=1 << 20,
                                   headers={"WWW-Authenticate": 'Bearer realm="vl2v"'})
                return
            state["api_key"] = name
        too_big = (f"request body is over the limit of {self.max_bytes} bytes: send fewer or smaller images "
                   f"per request")
        if declared is not None and int(declared) > self.drain_cap:
            await self._answer(send, 413, "request_too_large", too_big, close=True)
            return
        if declared is not None and int(declared) > self.max_bytes:
            await self._reject(receive, send, 413, "request_too_large", too_big, cap=self.drain_cap)
            return
        if method == "POST" and path in (IMAGES_PATH, TEXTS_PATH):
            ctype = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if ctype != "application/json":
                await self._reject(receive, send, 415, "unsupported_media_type",
                                   f"send the request body as application/json, not {ctype or 'no content type'}",
                                   cap=self.drain_cap)
                return
        try:
            with anyio.fail_after(self.service.config.body_timeout_s):
                body, outcome = await self._read(receive, keep=self.max_bytes, cap=self.drain_cap)
        except TimeoutError:
            await self._answer(send, 408, "request_timeout", "request body not received in time", close=True)
            return
        if outcome == "disconnect":
            return
        if outcome != "ok":
            await self._answer(send, 413, "request_too_large", too_big, close=outcome == "over_cap")
            return
        state["body_sha"] = hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + body).hexdigest()
        state["body_bytes"] = len(body)
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    async def _read(receive: Callable, keep: int, cap: int) -> tuple[bytes, str]:
        """Read the body: (body, "ok") if at most ``keep`` bytes; past that the rest is drained
        and dropped: "too_big" once it ended by ``cap`` bytes, "over_cap" when we stopped reading."""
        chunks: list[bytes] = []
        n = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return b"", "disconnect"
            chunk = msg.get("body", b"")
            n += len(chunk)
            if n <= keep:
                chunks.append(chunk)
            else:
                chunks.clear()
                if n > cap:
                    return b"", "over_cap"
            if not msg.get("more_body", False):
                return (b"".join(chunks), "ok") if n <= keep else (b"", "too_big")

    async def _reject(self, receive: Callable, send: Callable, status: int, code: str, message: str, cap: int,
                      headers: dict[str, str] | None = None) -> None:
        """Answer an error after draining the body (up to ``cap`` bytes), so the client can read it."""
        try:
            with anyio.fail_after(self.service.config.body_timeout_s):
                _, outcome = await self._read(receive, keep=0, cap=cap)
        except TimeoutError:
            outcome = "over_cap"
        if outcome != "disconnect":
            await self._answer(send, status, code, message, headers, close=outcome == "over_cap")

    @staticmethod
    async def _answer(send: Callable, status: int, code: str, message: str,
                      headers: dict[str, str] | None = None, close: bool = False) -> None:
        body = _error_body(status, code, message)
        raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        if close:
            raw.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the service
class EmbeddingService:
    """What the routes share: the teacher, keys, the usage ledger and in-flight idempotent requests."""

    def __init__(self, teacher: Teacher, config: ServiceConfig, name: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.teacher, self.config = teacher, config
        self.name = name or teacher.backend or type(teacher).__name__
        self.identity = teacher.identity()
        self.dim, self.size = int(teacher.embed_dim), int(teacher.image_size)
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self.keys = KeyRing(config.keys_file)
        self.ledger = UsageLedger(config.data_dir / USAGE_DB, ttl_s=config.idempotency_ttl_s, clock=clock)
        self.rates = RateLimiter(clock)
        self.limits = ImageLimits(config.max_image_pixels, config.max_request_pixels)
        self._teacher_lock = threading.Lock()
        self._decode_slots = threading.BoundedSemaphore(config.decode_workers)
        self._inflight_lock = threading.Lock()
        self._inflight: dict[tuple[str, str], threading.Event] = {}
        # what the teacher actually embedded (for tests and the load benchmark: billed must equal these)
        self.images_embedded = 0
        self.texts_embedded = 0

    def authenticate(self, headers: Headers) -> tuple[str | None, tuple[str, str]]:
        auth = headers.get("authorization")
        token = None
        if auth:
            scheme, _, value = auth.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                return None, ("invalid_api_key", "Authorization header must be 'Bearer <key>'")
            token = value.strip()
        token = token or headers.get(API_KEY_HEADER)
        if not token:
            return None, ("missing_api_key", f"no API key: send 'Authorization: Bearer <key>' or '{API_KEY_HEADER}: <key>'")
        name = self.keys.authenticate(token)
        if name is None:
            return None, ("invalid_api_key", "unknown API key")
        return name, ("", "")

    # ------------------------------------------------------------------ embedding
    def embed_images(self, blobs: list[str]) -> torch.Tensor:
        raw = [b64_image(s, i) for i, s in enumerate(blobs)]
        with self._decode_slots:
            x = decode_batch(raw, self.size, self.limits)
        with self._teacher_lock:
            emb = self.teacher.embed_images(x)
            self.images_embedded += len(blobs)
        return check_embeddings(emb.detach().float().cpu(), len(blobs), self.dim, "image")

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        with self._teacher_lock:
            emb = self.teacher.embed_texts(texts)
            self.texts_embedded += len(texts)
        return check_embeddings(emb.detach().float().cpu(), len(texts), self.dim, "text")

    def render(self, emb: torch.Tensor, encoding: str, request_id: str | None) -> bytes:
        arr = emb.numpy().astype(np.float32)
        rows: list[Any] = [encode_vector(v) for v in arr] if encoding == "base64" else arr.tolist()
        return json.dumps({"object": "embeddings", "model": self.identity, "embed_dim": self.dim,
                           "count": len(rows), "encoding": encoding, "request_id": request_id,
                           "embeddings": rows}, separators=(",", ":")).encode()

    # ------------------------------------------------------------------ quotas, billing, idempotency
    def admit(self, key: str, images: int, texts: int) -> Admission:
        """Take one request from the key's rate limit and reserve its queries against its quotas, or raise
        the 429 (413 for a batch over a window's quota) that says why not."""
        limits = self.keys.limits(key)
        try:
            if limits.rate is not None:
                wait = self.rates.take(key, limits.rate)
                if wait is not None:
                    unit = "second" if limits.rate.unit == "s" else "minute"
                    rate = limits.rate.rate
                    raise QuotaRefused("rate_limited", "requests", int(rate) if rate.is_integer() else rate, None, 1,
                                       unit, wait, burst=limits.rate.burst)
            return self.ledger.admit(key, images, texts, limits)
        except QuotaRefused as exc:
            raise _refusal(exc) from None

    def _run(self, key: str, route: str, counts: tuple[int, int], nbytes: int, compute: Callable[[], bytes],
             request_id: str | None = None, sha: str = "") -> bytes:
        """Admit, compute and bill one request: refused whole, or answered and billed; a failure costs nothing."""
        n_img, n_txt = counts
        admission = self.admit(key, n_img, n_txt)
        try:
            body = compute()
            self.ledger.bill(key, route, n_img, n_txt, nbytes, request_id, sha, body, admission=admission)
        except BaseException:
            self.ledger.release(admission)
            raise
        return body

    def answer(self, request: Request, route: str, request_id: str | None, counts: tuple[int, int],
               compute: Callable[[], bytes]) -> Response:
        """Admit-compute-bill-store once per (key, request id); replay the stored answer to retries.

        ``counts``: the request's (image, text) queries. A replay is neither billed nor checked against the
        key's quotas and rate limit: it was paid for when first answered.
        """
        key = request.state.api_key
        sha, nbytes = request.state.body_sha, request.state.body_bytes
        if request_id is None:
            return self._respond(self._run(key, route, counts, nbytes, compute), None, replayed=False)
        slot = (key, request_id)
        while True:
            mine = waiter = None
            with self._inflight_lock:
                stored = self.ledger.answer(key, request_id)
                if stored is None:
                    waiter = self._inflight.get(slot)
                    if waiter is None:
                        mine = self._inflight[slot] = threading.Event()
            if stored is not None:
                if stored.route != route or stored.body_sha != sha:
                    raise ApiError(409, "idempotency_key_reused",
                                   f"{IDEMPOTENCY_HEADER} {request_id!r} was already used for a different request; "
                                   f"use a new id for new content")
                self.ledger.count_replay(key)
                return self._respond(stored.response, request_id, replayed=True)
            if waiter is not None:  # the same request is being computed for an earlier try: wait, then replay
                if not waiter.wait(self.config.inflight_wait_s):
                    raise ApiError(409, "request_in_progress", "a request with this Idempotency-Key is still being "
                                   "processed; retry later", {"Retry-After": "5"})
                continue
            try:
                body = self._run(key, route, counts, nbytes, compute, request_id, sha)
            finally:
                with self._inflight_lock:
                    del self._inflight[slot]
                assert mine is not None
                mine.set()
            return self._respond(body, request_id, replayed=False)

    @staticmethod
    def _respond(body: bytes, request_id: str | None, replayed: bool) -> Response:
        headers = {REPLAYED_HEADER: "true" if replayed else "false"}
        if request_id is not None:
            headers[IDEMPOTENCY_HEADER] = request_id
        return Response(body, media_type="application/json", headers=headers)


# --------------------------------------------------------------------------- the app
def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": {"status", "code", "message", ...}}`` JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _error_response(exc.status, exc.code, exc.message, exc.headers, exc.extra)

    @app.exception_handler(ImageRejected)
    async def _image_error(request: Request, exc: ImageRejected) -> Response:
        return _error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = []
        for err in exc.errors()[:5]:
            loc = ".".join(str(x) for x in err.get("loc", ()))
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        return _error_response(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = int(exc.status_code)
        if status == 400:  # FastAPI's "error parsing the body" (e.g. not UTF-8): a malformed body, like bad JSON
            return _error_response(422, "invalid_request", f"malformed request body ({exc.detail})")
        return _error_response(status, _STATUS_CODES.get(status, "error"), str(exc.detail), dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> Response:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error_response(500, "internal_error", "the service failed on this request; nothing was billed")


def create_app(teacher: Teacher, config: ServiceConfig, name: str | None = None,
               clock: Callable[[], float] = time.time) -> FastAPI:
    """The ASGI app serving ``teacher``; ``app.state.service`` is the :class:`EmbeddingService`.

    ``clock`` (seconds since the epoch) dates bills and drives quota windows and rate limits (tests pass a fake).
    """
    service = EmbeddingService(teacher, config, name, clock)
    app = FastAPI(title="vl2v embedding service", version=__version__, docs_url=None, redoc_url=None,
                  description="A vision-language teacher's image and text embeddings, per query, behind API keys. "
                              "See docs/serving.md.")
    app.state.service = service
    keyed = [Security(HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")),
             Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False, description="the API key"))]
    _add_error_handlers(app)
    # the routes in this order (it is the OpenAPI document's): health, model, images, texts, usage
    _add_info_routes(app, service, keyed)
    _add_embedding_routes(app, service, keyed)
    _add_usage_route(app, service, keyed)
    app.add_middleware(_Gate, service=service)
    return app


def _request_models(service: EmbeddingService) -> tuple[type[BaseModel], type[BaseModel]]:
    """The bodies of the two embedding routes, ``ImagesRequest`` and ``TextsRequest``, with the service's limits
    in their schemas."""
    cfg = service.config

    class ImagesRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        images: list[Annotated[str, Field(json_schema_extra={"format": "byte"})]] = Field(
            min_length=1, json_schema_extra={"maxItems": cfg.max_batch_images},
            description=f"1 to {cfg.max_batch_images} base64-encoded PNG or JPEG files (any size up to "
                        f"{cfg.max_image_pixels} pixels; converted to RGB and shown to the teacher at "
                        f"{service.size}x{service.size})")
        encoding: Literal["float", "base64"] = Field(
            "float", description="float: JSON numbers; base64: each embedding as base64 of little-endian float32")

    class TextsRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        texts: list[str] = Field(
            min_length=1, json_schema_extra={"maxItems": cfg.max_batch_texts},
            description=f"1 to {cfg.max_batch_texts} texts of at most {cfg.max_text_chars} characters")
        encoding: Literal["float", "base64"] = "float"

    return ImagesRequest, TextsRequest


def _add_info_routes(app: FastAPI, service: EmbeddingService, keyed: list[Any]) -> None:
    """``GET /v1/health`` (no key) and ``GET /v1/model``."""
    cfg = service.config

    @app.get(HEALTH_PATH, response_model=Health, tags=["service"])
    def health() -> dict[str, str]:
        """Liveness; needs no key."""
        return {"status": "ok", "api_version": API_VERSION}

    @app.get(MODEL_PATH, response_model=ModelInfo, dependencies=keyed, responses=_responses(401), tags=["service"])
    def model() -> dict[str, Any]:
        """The teacher behind this service: identity, embedding size, input size, and the request limits."""
        return {"name": service.name, "identity": service.identity, "embed_dim": service.dim,
                "image_size": service.size, "api_version": API_VERSION, "image_formats": list(IMAGE_FORMATS),
                "limits": cfg.limits()}


def _add_embedding_routes(app: FastAPI, service: EmbeddingService, keyed: list[Any]) -> None:
    """``POST /v1/embeddings/images`` and ``POST /v1/embeddings/texts``: billed per image and per text."""
    cfg = service.config
    ImagesRequest, TextsRequest = _request_models(service)
    idem_header = Header(None, alias=IDEMPOTENCY_HEADER, min_length=1, max_length=128, pattern=IDEMPOTENCY_KEY_PATTERN,
                         description="a client-chosen id; a retry with the same id gets the stored answer, billed once")

    @app.post(IMAGES_PATH, response_model=EmbeddingsResponse, dependencies=keyed, tags=["embeddings"],
              responses=_responses(401, 408, 409, 413, 415, 422, 429, 500))
    def embed_images(request: Request, body: ImagesRequest,
                     idempotency_key: str | None = idem_header) -> Response:
        """Embed a batch of images; billed one image query per image."""
        if len(body.images) > cfg.max_batch_images:
            raise ApiError(413, "batch_too_large", f"{len(body.images)} images in one request, the limit is "
                           f"{cfg.max_batch_images}: split the batch")

        def compute() -> bytes:
            return service.render(service.embed_images(body.images), body.encoding, idempotency_key)

        return service.answer(request, "images", idempotency_key, (len(body.images), 0), compute)

    @app.post(TEXTS_PATH, response_model=EmbeddingsResponse, dependencies=keyed, tags=["embeddings"],
              responses=_responses(401, 408, 409, 413, 415, 422, 429, 500))
    def embed_texts(request: Request, body: TextsRequest,
                    idempotency_key: str | None = idem_header) -> Response:
        """Embed a batch of texts; billed one text query per text."""
        _check_texts(cfg, body.texts)

        def compute() -> bytes:
            return service.render(service.embed_texts(body.texts), body.encoding, idempotency_key)

        return service.answer(request, "texts", idempotency_key, (0, len(body.texts)), compute)


def _check_texts(cfg: ServiceConfig, texts: list[str]) -> None:
    """ApiError (413, 422) for a batch of texts beyond the service's limits, or not valid Unicode."""
    if len(texts) > cfg.max_batch_texts:
        raise ApiError(413, "batch_too_large", f"{len(texts)} texts in one request, the limit is "
                       f"{cfg.max_batch_texts}: split the batch")
    for i, t in enumerate(texts):
        if len(t) > cfg.max_text_chars:
            raise ApiError(413, "text_too_long", f"texts[{i}] has {len(t)} characters, the limit is {cfg.max_text_chars}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, "invalid_text", f"texts[{i}] is not valid Unicode (lone surrogate)") from None


def _add_usage_route(app: FastAPI, service: EmbeddingService, keyed: list[Any]) -> None:
    """``GET /v1/usage``: the calling key's bill, quotas and rate limit."""

    @app.get(USAGE_PATH, response_model=Usage, dependencies=keyed, responses=_responses(401), tags=["service"])
    def usage(request: Request) -> dict[str, Any]:
        """What the calling key has been billed (image and text queries) since the data directory was created,
        its quotas and rate limit, and per period (each quota's current window, and all time) the queries
        billed, the quota and what remains."""
        return service.ledger.summary(request.state.api_key, service.keys.limits(request.state.api_key))


# --------------------------------------------------------------------------- running it
def serve(teacher_spec: str, teacher_options: dict[str, Any], config: ServiceConfig, host: str = "127.0.0.1",
          port: int = 8000, device: str | None = None, log_level: str = "info",
          max_connections: int = 256, announce: Callable[[str], None] = print) -> None:
    """Build the teacher and run the service until interrupted (``vl2v serve``)."""
    import uvicorn

    from vl2v.teachers.registry import create_teacher

    confine_writes(config.data_dir)  # no .pyc files; torch's caches (if it makes any now) under the data directory
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    KeyRing(config.keys_file)  # fail on a missing or broken keys file before loading a model
    teacher = create_teacher(teacher_spec, **teacher_options)
    if device:
        teacher = teacher.to(device)
    app = create_app(teacher, config, name=teacher_spec)
    service: EmbeddingService = app.state.service
    announce(f"vl2v serve: {teacher.identity()} (embed_dim {service.dim}, image_size {service.size}) "
             f"on http://{host}:{port}/v1 with {len(service.keys.names())} API key(s); data in {config.data_dir}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        announce("vl2v serve: warning: plain HTTP on a non-loopback address: API keys and images travel unencrypted; "
                 "put the service behind a TLS reverse proxy")
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False, date_header=True,
                limit_concurrency=max_connections, timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,
                lifespan="off")
