"""What every vendor teacher shares: keys, views, batching, retries, error messages, prices and the budget.

A vendor teacher (``--teacher vendor:PROVIDER:MODEL``) is a client of a commercial multimodal
embedding API whose image and text embeddings share one space. A provider's module (jina.py,
cohere.py, voyage.py, nomic.py) sets the class attributes below (where to send, the documented
limits, the models) and writes three small hooks: the request for a chunk of images, the request
for a chunk of texts, and where the vectors are in the answer. This class does the rest:

* the view: the [0, 1] input (``image_size`` px, rendered by the caller) is quantised to 8 bits,
  resized to at most the provider's documented side and encoded as PNG or JPEG (quality q); that
  view (format, quality, side) is part of :meth:`identity`, so the teacher store never mixes views;
* batching within the documented limits (images and texts per request, bytes per image and per request);
* retries with backoff through ``tenacity`` on timeouts, dropped connections, 5xx and 429, honouring
  ``Retry-After``; every other refusal is one line (:class:`VendorError`, a :class:`TeacherError`):
  a bad key (401/403), a quota or credit exhausted (402, or 403/429 with the provider's quota wording),
  an unknown model, an answer that is not JSON, does not parse as documented or has the wrong size;
* prices as data (``prices.json`` next to this file, overridable with ``price_image=`` / ``price_text=``)
  and :meth:`price`; ``budget_usd=`` refuses (:class:`QueryBudgetExceeded`) a call whose estimated cost
  would pass the budget *before* anything of it is sent. The teacher store commits every batch it
  receives, so nothing already paid for is lost.

The key comes from ``api_key=`` or the provider's environment variable; it is sent in a header only,
never logged, never part of the identity, and scrubbed from any vendor message repeated in an error.
"""

from __future__ import annotations

import base64
import email.utils
import functools
import io
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
from PIL import Image

from vl2v import __version__
from vl2v.teachers.base import PaidTeacher, QueryBudgetExceeded, TeacherError
from vl2v.utils.extras import MissingExtraError, missing_modules

_MISSING = missing_modules("httpx", "tenacity")
if _MISSING:  # a one-line error naming the extra, not a bare ImportError
    raise MissingExtraError(f"{', '.join(_MISSING)} not installed: the vendor teachers (--teacher vendor:...) need "
                            f"the 'vendors' extra; install it with: pip install 'vl2v[vendors]' (or 'vl2v[all]')")
import httpx  # noqa: E402
import tenacity  # noqa: E402

#: a Retry-After longer than this (seconds) is not waited out: the run stops with a one-line error instead
MAX_RETRY_AFTER = 600.0
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
_MODEL_WORDS = (r"(unknown|invalid|unsupported|no such) model|model\W+\S+\W+(is )?(not found|unknown|invalid|"
                r"not supported|does not exist)|model_not_found|MODEL_NOT_FOUND")


class VendorError(TeacherError):
    """A vendor's API refused or could not answer; the message (one line) says what to do."""


class _Transient(Exception):
    """A failure worth retrying (timeout, dropped connection, 5xx, rate limit); ``retry_after`` in seconds."""

    def __init__(self, what: str, retry_after: float | None = None) -> None:
        super().__init__(what)
        self.retry_after = retry_after


def _sleep(seconds: float) -> None:
    """tenacity's own sleep, looked up at call time (tests patch ``tenacity.nap.sleep`` instead of sleeping)."""
    tenacity.nap.sleep(seconds)


@dataclass(frozen=True)
class ModelSpec:
    """One model of a provider: its embedding size, the side it sees by default and the largest side sent."""

    embed_dim: int
    native_side: int  # the default ``image_size`` (the model's input resolution)
    max_side: int  # documented (or the model's) limit: larger inputs are resized down to it before sending
    text_model: str | None = None  # the text model of the same space, where the API names it apart (Nomic)


# ------------------------------------------------------------------ prices (package data)
@functools.cache
def price_table() -> dict[str, Any]:
    """prices.json: provider -> {currency, read_on, source, verified, note, models: {model: {image, text}}}."""
    text = resources.files("vl2v.teachers.vendors").joinpath("prices.json").read_text(encoding="utf-8")
    return json.loads(text)


def image_usd(entry: dict[str, Any] | None, side: int) -> float | None:
    """USD for one square image of ``side`` px under a prices.json ``image`` entry (None: no price known)."""
    if not entry:
        return None
    pixels = side * side
    if "usd_per_billion_pixels" in entry:
        billed = min(max(pixels, entry.get("min_pixels", 0)), entry.get("max_pixels", pixels))
        return billed * entry["usd_per_billion_pixels"] / 1e9
    if "tile_px" in entry:
        tokens = math.ceil(side / entry["tile_px"]) ** 2 * entry["tokens_per_tile"]
    else:
        tokens = math.ceil(max(pixels, entry.get("min_pixels", 0)) * entry["tokens_per_pixel"])
    return tokens * entry["usd_per_million_tokens"] / 1e6


def text_tokens(text: str, entry: dict[str, Any]) -> int:
    """The estimated tokens of one text: ceil(characters / chars_per_token), at least 1."""
    return max(1, math.ceil(len(text) / entry.get("chars_per_token", 4)))


# ------------------------------------------------------------------ the teacher
class VendorTeacher(PaidTeacher):
    """Base of the vendor adapters; see the module docstring. Subclasses set the ClassVars and three hooks."""

    backend = "vendor"
    noun = "vendor teacher"
    white_box = False

    provider: ClassVar[str]
    env_vars: ClassVar[tuple[str, ...]]
    base_url: ClassVar[str]
    api_version: ClassVar[str]  # the API version followed, e.g. "v2" (recorded in identity())
    docs_url: ClassVar[str]  # the request/response reference followed, as documented on docs_read_on
    docs_read_on: ClassVar[str] = "2026-12-05"
    models: ClassVar[dict[str, ModelSpec]]
    default_format: ClassVar[str] = "png"  # "png" (lossless) or "jpeg"
    default_quality: ClassVar[int] = 95
    max_images_per_request: ClassVar[int]
    max_texts_per_request: ClassVar[int]
    max_image_bytes: ClassVar[int | None] = None  # documented limit of one encoded image
    max_request_bytes: ClassVar[int] = 8 * 2**20  # one request body (documented, or our own conservative cap)
    quota_words: ClassVar[str] = r"quota|insufficient (account )?(balance|credit|funds)|billing|payment"
    #: request settings that change the embeddings (input types, task prefixes): recorded in identity()
    settings: ClassVar[str] = ""

    def __init__(self, model: str, api_key: str | None = None, image_size: int | None = None,
                 image_format: str | None = None, jpeg_quality: int | None = None, batch_size: int | None = None,
                 text_batch_size: int | None = None, timeout: float = 60.0, retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 60.0, budget_usd: float | None = None, price_image: float | None = None,
                 price_text: float | None = None, base_url: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        if model not in self.models:
            raise TeacherError(f"vendor {self.provider} has no model {model!r} here; known: {', '.join(self.models)} "
                               f"(e.g. --teacher vendor:{self.provider}:{next(iter(self.models))})")
        self.model, self.spec = model, self.models[model]
        key = api_key or next((os.environ[v] for v in self.env_vars if os.environ.get(v)), None)
        if not key:
            raise TeacherError(f"vendor {self.provider}: no API key; set the environment variable "
                               f"{' or '.join(self.env_vars)} or pass --teacher-opt api_key=KEY")
        self._secret = key
        self.embed_dim = self.spec.embed_dim
        self.image_size = int(image_size or self.spec.native_side)
        self.sent_side = min(self.image_size, self.spec.max_side)
        self.image_format = (image_format or self.default_format).lower().replace("jpg", "jpeg")
        if self.image_format not in ("png", "jpeg"):
            raise TeacherError(f"vendor {self.provider}: image_format must be png or jpeg, got {image_format!r}")
        self.jpeg_quality = int(jpeg_quality or self.default_quality)
        self.batch_size = max(1, min(int(batch_size or self.max_images_per_request), self.max_images_per_request))
        self.text_batch_size = max(1, min(int(text_batch_size or self.max_texts_per_request),
                                          self.max_texts_per_request))
        self.timeout, self.retries = float(timeout), int(retries)
        self.backoff, self.max_backoff = float(backoff), float(max_backoff)
        self._set_prices(price_image, price_text)
        self.budget_usd = None if budget_usd is None else float(budget_usd)
        if self.budget_usd is not None and (self._image_usd is None or self._text_usd is None):
            raise TeacherError(f"vendor {self.provider}:{model}: budget_usd needs a price and prices.json has none for "
                               f"{'images' if self._image_usd is None else 'texts'}; pass --teacher-opt "
                               f"price_image=USD_PER_IMAGE price_text=USD_PER_TEXT")
        self.url = (base_url or self.base_url).rstrip("/")
        self._client = httpx.Client(base_url=self.url, transport=transport,
                                    timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                                    headers={**self._auth_headers(key), "User-Agent": f"vl2v/{__version__}"})
        self._lock = threading.Lock()
        # what this client paid for and sent (the teacher store's QueryStats picks up bytes_sent)
        self.image_queries = self.text_queries = 0
        self.bytes_sent = self.bytes_received = self.requests = self.retried = 0
        self.spent_usd = 0.0  # estimated from the prices, for the queries answered

    # ------------------------------------------------------------------ hooks (per provider)
    def _auth_headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def _image_request(self, chunk: list[bytes]) -> dict[str, Any]:
        """httpx request arguments (``url`` and ``json`` or ``data``/``files``) embedding encoded images."""
        raise NotImplementedError

    def _text_request(self, texts: list[str]) -> dict[str, Any]:
        raise NotImplementedError

    def _vectors(self, data: Any, kind: str) -> list[Any]:
        """The embeddings in a parsed answer, in input order (raise KeyError/TypeError/ValueError if absent)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ identity, prices
    @property
    def view(self) -> str:
        """The view the vendor is shown: format, quality, side (and the input side when resized from it)."""
        q = f"-q{self.jpeg_quality}" if self.image_format == "jpeg" else ""
        src = f"<{self.image_size}px" if self.image_size != self.sent_side else ""
        return f"{self.image_format}{q}@{self.sent_side}px{src}"

    def identity(self) -> str:
        extra = f";text={self.spec.text_model}" if self.spec.text_model else ""
        extra += f";{self.settings}" if self.settings else ""
        return (f"vendor[{self.provider}:{self.model};api={self.api_version};dim={self.embed_dim};"
                f"view={self.view}{extra}]")

    def describe(self) -> str:
        return f"{self.identity()} at {self.url}"

    def _set_prices(self, price_image: float | None, price_text: float | None) -> None:
        table = price_table().get(self.provider, {})
        entry = table.get("models", {}).get(self.model) or {}
        self._price_meta = {"read_on": table.get("read_on"), "source": table.get("source")}
        self._text_entry = entry.get("text")
        self._image_usd = float(price_image) if price_image is not None else image_usd(entry.get("image"), self.sent_side)
        self._text_override = None if price_text is None else float(price_text)
        if self._text_override is not None:
            self._text_usd = self._text_override
        elif self._text_entry:
            self._text_usd = self._text_entry["tokens_per_query"] * self._text_entry["usd_per_million_tokens"] / 1e6
        else:
            self._text_usd = None
        given = [k for k, v in (("price_image", price_image), ("price_text", price_text)) if v is not None]
        if given:
            src = "--teacher-opt " + " ".join(given)
            self._price_meta["source"] = src if len(given) == 2 else f"{src}; the rest: {self._price_meta['source']}"

    def price(self) -> dict[str, Any] | None:
        """USD per image query (at the view sent) and per text query (a prompt of the table's typical length).

        ``{"image", "text", "currency": "USD", "read_on", "source"}``; a value is None where no price is known;
        None when neither is known. ``--teacher-opt price_image=``/``price_text=`` replace the table's figures.
        """
        if self._image_usd is None and self._text_usd is None:
            return None
        return {"image": self._image_usd, "text": self._text_usd, "currency": "USD", **self._price_meta}

    def image_cost(self, n: int) -> float | None:
        return None if self._image_usd is None else n * self._image_usd

    def text_cost(self, texts: Sequence[str]) -> float | None:
        """Estimated USD for embedding ``texts`` (their own lengths; ``price_text`` per text when given)."""
        if self._text_override is not None:
            return len(texts) * self._text_override
        if not self._text_entry:
            return None
        tokens = sum(text_tokens(t, self._text_entry) for t in texts)
        return tokens * self._text_entry["usd_per_million_tokens"] / 1e6

    def estimate_usd(self, n_images: int = 0, texts: Sequence[str] = ()) -> float | None:
        """Estimated USD for ``n_images`` image queries and ``texts``; None if a needed price is unknown."""
        parts = [self.image_cost(n_images) if n_images else 0.0, self.text_cost(list(texts)) if texts else 0.0]
        return None if any(p is None for p in parts) else float(sum(parts))

    def _charge(self, usd: float | None, what: str) -> None:
        if self.budget_usd is None or usd is None:
            return
        if self.spent_usd + usd > self.budget_usd * (1 + 1e-9):
            raise QueryBudgetExceeded(
                f"vendor teacher budget: ${self.spent_usd:.4f} of ${self.budget_usd:g} spent (estimated), this call "
                f"needs about ${usd:.4f} more for {what}; nothing was sent. Embeddings already received are kept "
                f"(in the teacher store); raise --teacher-opt budget_usd=USD to continue")

    # ------------------------------------------------------------------ Teacher
    def _check_images(self, n: int) -> None:
        self._charge(self.image_cost(n), f"{n} images")

    def _check_texts(self, texts: list[str]) -> None:
        self._charge(self.text_cost(texts), f"{len(texts)} texts")

    def _image_batches(self, images: torch.Tensor) -> list[list[bytes]]:  # type: ignore[override]
        return self._chunks(self._encode(images))

    def _encode_images(self, chunk: list[bytes]) -> torch.Tensor:  # type: ignore[override]
        out = self._embed("images", self._image_request(chunk), len(chunk))
        self.image_queries += len(chunk)
        self.spent_usd += self.image_cost(len(chunk)) or 0.0
        return torch.from_numpy(out)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = self._embed("texts", self._text_request(texts), len(texts))
        self.text_queries += len(texts)
        self.spent_usd += self.text_cost(texts) or 0.0
        return torch.from_numpy(out)

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ the view and the chunks
    def _encode(self, images: torch.Tensor) -> list[bytes]:
        """[B, 3, S, S] in [0, 1] -> encoded images (8-bit; resized to the sent side; PNG or JPEG)."""
        arr = (images.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = []
        for a in arr:
            im = Image.fromarray(np.ascontiguousarray(a), "RGB")
            if im.width != self.sent_side:
                im = im.resize((self.sent_side, self.sent_side), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            if self.image_format == "png":
                im.save(buf, format="PNG", compress_level=6)
            else:
                im.save(buf, format="JPEG", quality=self.jpeg_quality)
            data = buf.getvalue()
            if self.max_image_bytes is not None and len(data) > self.max_image_bytes:
                raise VendorError(f"vendor {self.provider}: one encoded image is {len(data)} bytes, over the documented "
                                  f"{self.max_image_bytes}; pass --teacher-opt image_format=jpeg or a smaller image_size")
            out.append(data)
        return out

    def _chunks(self, encoded: list[bytes]) -> list[list[bytes]]:
        """Requests of at most ``batch_size`` images and ``max_request_bytes`` (base64 counted) each."""
        chunks: list[list[bytes]] = []
        cur: list[bytes] = []
        size = 0
        for e in encoded:
            need = 4 * math.ceil(len(e) / 3) + 64
            if cur and (len(cur) >= self.batch_size or size + need > self.max_request_bytes):
                chunks.append(cur)
                cur, size = [], 0
            cur.append(e)
            size += need
        if cur:
            chunks.append(cur)
        return chunks

    def _mime(self) -> str:
        return f"image/{self.image_format}"

    def _data_uri(self, data: bytes) -> str:
        return f"data:{self._mime()};base64,{base64.b64encode(data).decode('ascii')}"

    # ------------------------------------------------------------------ requests
    def _where(self, path: str) -> str:
        return f"vendor {self.provider} ({self.url}{path}, model {self.model})"

    def _embed(self, kind: str, request: dict[str, Any], n: int) -> np.ndarray:
        r = self._send(request)
        where = self._where(request["url"])
        try:
            data = r.json()
        except ValueError:
            raise VendorError(f"{where}: the answer is not JSON ({len(r.content)} bytes: "
                              f"{_one_line(r.text, 60, self._secret)!r})") from None
        try:
            rows = self._vectors(data, kind)
            arr = np.asarray(rows, dtype=np.float32)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise VendorError(f"{where}: the answer does not parse as documented "
                              f"({type(exc).__name__}: {_one_line(str(exc), 120, self._secret)})") from None
        if arr.ndim != 2 or arr.shape[0] != n:
            raise VendorError(f"{where}: {len(rows)} {kind} embeddings came back for {n} inputs")
        if arr.shape[1] != self.embed_dim:
            raise VendorError(f"{where}: the answer has {arr.shape[1]}-d embeddings, {self.model} has "
                              f"{self.embed_dim}; the vendor changed the model, or the answer is not this model's")
        if not np.isfinite(arr).all():
            raise VendorError(f"{where}: the answer has non-finite embedding values")
        return arr

    def _send(self, request: dict[str, Any]) -> httpx.Response:
        """POST with retries (tenacity): timeouts, dropped connections, 5xx and 429, honouring Retry-After."""
        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(self.retries + 1), wait=self._wait,
                                     retry=tenacity.retry_if_exception_type(_Transient), sleep=_sleep, reraise=True,
                                     before_sleep=self._note_retry)
        try:
            return retrying(self._attempt, request)
        except _Transient as exc:
            raise VendorError(f"{self._where(request['url'])}: gave up after {self.retries + 1} tries; last: {exc}. "
                              f"Try again later, or raise --teacher-opt retries=N / timeout=SECONDS") from None

    def _note_retry(self, state: tenacity.RetryCallState) -> None:
        self.retried += 1

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            return float(retry_after)  # the vendor said how long (<= MAX_RETRY_AFTER, checked in _refusal)
        return tenacity.wait_random_exponential(multiplier=self.backoff, max=self.max_backoff)(state)

    def _attempt(self, request: dict[str, Any]) -> httpx.Response:
        kw = dict(request)
        req = self._client.build_request("POST", kw.pop("url"), **kw)
        body = req.read()
        self.requests += 1
        try:
            r = self._client.send(req)
        except httpx.ConnectError as exc:  # nothing was sent
            raise _Transient(f"cannot connect ({type(exc).__name__})") from None
        except httpx.TimeoutException as exc:
            self.bytes_sent += len(body)
            raise _Transient(f"no answer within {self.timeout:g} s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            self.bytes_sent += len(body)
            raise _Transient(f"connection failed ({type(exc).__name__})") from None
        self.bytes_sent += len(body)
        self.bytes_received += len(r.content)
        if r.status_code < 400:
            return r
        raise self._refusal(r, request["url"])

    def _refusal(self, r: httpx.Response, path: str) -> Exception:
        """A refused request as the exception to raise: :class:`_Transient` (retried) or :class:`VendorError`."""
        status, msg = r.status_code, _error_message(r, self._secret)
        where = self._where(path)
        if status == 402 or (status in (403, 429) and re.search(self.quota_words, msg, re.I)):
            return VendorError(f"{where}: quota or credit exhausted (HTTP {status}: {msg}); top up or raise the "
                               f"account's limit on the vendor's dashboard and run again (embeddings already "
                               f"received are kept in the teacher store)")
        if status in (401, 403):
            return VendorError(f"{where} rejected the API key (HTTP {status}: {msg}); set "
                               f"{' or '.join(self.env_vars)} or --teacher-opt api_key=KEY to a valid key")
        if status in RETRY_STATUSES:
            wait = _retry_after(r)
            if wait is not None and wait > MAX_RETRY_AFTER:
                return VendorError(f"{where}: HTTP {status} asks to wait {wait:.0f} s (Retry-After), more than "
                                   f"{MAX_RETRY_AFTER:.0f} s; try again later ({msg})")
            return _Transient(f"HTTP {status}: {msg}", wait)
        if status == 413:
            return VendorError(f"{where}: request too large (HTTP 413: {msg}); lower --teacher-opt batch_size=N (now "
                               f"{self.batch_size}) or image_size, or pass image_format=jpeg")
        if status in (400, 404, 422) and re.search(_MODEL_WORDS, msg, re.I):
            return VendorError(f"{where}: the API does not know model {self.model!r} (HTTP {status}: {msg}); "
                               f"see {self.docs_url}")
        return VendorError(f"{where} refused the request (HTTP {status}: {msg})")


# ------------------------------------------------------------------ helpers
def _one_line(text: str, limit: int, secret: str | None = None) -> str:
    out = " ".join(str(text).split())
    if secret:
        out = out.replace(secret, "<key>")
    return out if len(out) <= limit else out[:limit - 3] + "..."


def _error_message(r: httpx.Response, secret: str | None = None) -> str:
    """The vendor's error text in one line: JSON ``message``/``detail``/``error`` (with a ``code``), else the body."""
    try:
        data = r.json()
    except ValueError:
        return _one_line(r.text or r.reason_phrase, 200, secret) or str(r.status_code)
    parts: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, dict):
            for k in ("code", "type", "message", "detail", "error", "msg"):
                if k in v:
                    walk(v[k])
        elif isinstance(v, list):
            for x in v[:3]:
                walk(x)

    walk(data)
    return _one_line(": ".join(dict.fromkeys(parts)) or r.text, 200, secret)


def _retry_after(r: httpx.Response) -> float | None:
    """Retry-After in seconds (a number or an HTTP date), None if absent or unreadable."""
    value = r.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
