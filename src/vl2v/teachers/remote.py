"""The ``remote`` teacher: a client of a ``vl2v serve`` embedding service (pay per query).

``--teacher remote:http://HOST:PORT`` with ``--teacher-opt`` options:

=============  ===========================================================================
api_key        the API key (default: environment variable ``VL2V_API_KEY``)
batch_size     images per request (default 64; capped at the server's ``max_batch_images``)
timeout        seconds to wait for one answer (default 60)
retries        extra tries after a timeout, a dropped connection or a 5xx/429 (default 5)
backoff        first retry delay in seconds; doubles each try, with full jitter (default 0.5)
max_backoff    cap of one retry delay in seconds (default 30)
max_wait       longest ``Retry-After`` of a 429 (the key's quota window or rate limit) that is
               waited out, in seconds (default 60). Longer, or a prepaid balance exhausted:
               :class:`QueryBudgetExceeded`, naming the reason.
budget         hard cap on billed queries (images + texts) for this teacher object
               (default: none). A call that would pass it raises
               :class:`QueryBudgetExceeded` *before* anything is sent.
=============  ===========================================================================

A 429 from the service carries ``reason`` (``quota_exceeded``, ``rate_limited``,
``prepaid_exhausted``) and ``retry_after``; the teacher sleeps that long and
retries the same batch (one of its ``retries``), or stops with
:class:`QueryBudgetExceeded` when the refusal will not clear within ``max_wait``.

Images go over the wire as lossless PNG: the [0, 1] input is quantised to
8 bits (``round(x * 255)``), which is exact for inputs that came from 8-bit
images, as every dataset view here does. Every request carries an
``Idempotency-Key`` made once per logical batch and reused on every retry of
it, so a retry after a lost answer is answered from the server's store and
billed once. :attr:`image_queries`, :attr:`text_queries` and
:attr:`bytes_sent` count what this client paid for and sent.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from vl2v import __version__
from vl2v.config import NonNegFloat, NonNegInt, PosInt, config_dataclass
from vl2v.teachers.base import PaidTeacher, QueryBudgetExceeded, Teacher, TeacherError
from vl2v.teachers.registry import register_teacher
from vl2v.teachers.wire import (
    IDEMPOTENCY_HEADER,
    IMAGES_PATH,
    MODEL_PATH,
    TEXTS_PATH,
    USAGE_PATH,
    decode_vector,
    json_body_overhead,
)
from vl2v.utils.extras import require

if TYPE_CHECKING:  # pragma: no cover
    import httpx

API_KEY_ENV = "VL2V_API_KEY"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def _require_httpx() -> None:
    """httpx (the 'serve' extra) is imported by the client only, so that registering this backend stays light:
    a one-line error naming the extra, not a bare ImportError."""
    require("serve", "httpx")


def _sleep(seconds: float) -> None:
    """Every wait between tries goes through here (tests patch it)."""
    time.sleep(seconds)


class RemoteTeacherError(TeacherError):
    """The embedding service refused or could not answer; the message says what to do."""


def _as_int(name: str, v: Any, minimum: int) -> int:
    try:
        out = int(v)
    except (TypeError, ValueError):
        raise TeacherError(f"remote teacher option {name} must be an integer, got {v!r}") from None
    if out < minimum:
        raise TeacherError(f"remote teacher option {name} must be >= {minimum}, got {out}")
    return out


def _as_float(name: str, v: Any, minimum: float) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        raise TeacherError(f"remote teacher option {name} must be a number, got {v!r}") from None
    if not out >= minimum:
        raise TeacherError(f"remote teacher option {name} must be >= {minimum}, got {out}")
    return out


class RemoteTeacher(PaidTeacher):
    backend = "remote"
    noun = "remote teacher"
    white_box = False

    def __init__(self, url: str, api_key: str | None = None, batch_size: int | str = 64,
                 timeout: float | str = 60.0, retries: int | str = 5, backoff: float | str = 0.5,
                 max_backoff: float | str = 30.0, budget: int | str | None = None, max_wait: float | str = 60.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        _require_httpx()
        import httpx

        if not url or not url.startswith(("http://", "https://")):
            raise TeacherError(f"remote teacher needs an http(s) URL, e.g. remote:http://127.0.0.1:8000; got {url!r}")
        self.url = url.rstrip("/")
        key = api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise TeacherError(f"remote teacher: no API key. Set the environment variable {API_KEY_ENV} or pass "
                               f"--teacher-opt api_key=KEY (the service's operator creates keys with "
                               f"`vl2v serve --new-key NAME`)")
        self.batch_size = _as_int("batch_size", batch_size, 1)
        self.timeout = _as_float("timeout", timeout, 0.001)
        self.retries = _as_int("retries", retries, 0)
        self.backoff = _as_float("backoff", backoff, 0.0)
        self.max_backoff = _as_float("max_backoff", max_backoff, 0.0)
        self.max_wait = _as_float("max_wait", max_wait, 0.0)
        self.budget = None if budget in (None, "", "none", "None") else _as_int("budget", budget, 0)
        self._client = httpx.Client(
            base_url=self.url, transport=transport,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            headers={"Authorization": f"Bearer {key}", "User-Agent": f"vl2v/{__version__}"})
        self._lock = threading.Lock()
        # what this client paid for and sent (QueryStats picks these up)
        self.image_queries = 0
        self.text_queries = 0
        self.bytes_sent = 0  # request bodies put on the wire, retries included
        self.bytes_received = 0
        self.requests = 0  # HTTP attempts, retries included
        self.retried = 0
        info = self._call("GET", MODEL_PATH).json()
        try:
            self._identity = str(info["identity"])
            self.embed_dim = int(info["embed_dim"])
            self.image_size = int(info["image_size"])
            self.limits = {k: int(v) for k, v in dict(info.get("limits", {})).items()}
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteTeacherError(f"{self.url} does not look like a vl2v embedding service "
                                     f"(bad {MODEL_PATH} answer: {exc})") from None
        self.server_name = str(info.get("name", ""))
        self.batch_size = min(self.batch_size, self.limits.get("max_batch_images", self.batch_size))
        self.text_batch_size = self.limits.get("max_batch_texts", 256)

    # ------------------------------------------------------------------ Teacher
    def identity(self) -> str:
        """The server's teacher identity, marked remote (inputs are 8-bit PNG, so keep its cache apart)."""
        return f"remote[{self._identity}]"

    def describe(self) -> str:
        return f"{self.identity()} at {self.url}"

    @property
    def spent(self) -> int:
        return self.image_queries + self.text_queries

    def _charge(self, n: int, what: str) -> None:
        if self.budget is not None and self.spent + n > self.budget:
            raise QueryBudgetExceeded(
                f"remote teacher budget: {self.spent} of {self.budget} queries used, this call needs {n} more "
                f"{what}; nothing was sent. Embeddings already received are kept (in the teacher store); "
                f"raise --teacher-opt budget=N to continue")

    def _check_images(self, n: int) -> None:
        self._charge(n, "images")

    def _check_texts(self, texts: list[str]) -> None:
        self._charge(len(texts), "texts")

    # hooks of the base class's loop: a chunk is one request
    def _image_batches(self, images: torch.Tensor) -> list[list[str]]:
        return self._chunks(_encode_pngs(images))

    def _encode_images(self, chunk: list[str]) -> torch.Tensor:  # type: ignore[override]
        out = self._embed("images", IMAGES_PATH, chunk, len(chunk))
        self.image_queries += len(chunk)
        return torch.from_numpy(out)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = self._embed("texts", TEXTS_PATH, texts, len(texts))
        self.text_queries += len(texts)
        return torch.from_numpy(out)

    def _finish(self, e: torch.Tensor) -> torch.Tensor:
        """The service's answers are finished embeddings (normalised by its teacher): kept bit for bit."""
        return e

    def usage(self) -> dict[str, Any]:
        """The server's metering of this key (GET /v1/usage)."""
        return self._call("GET", USAGE_PATH).json()

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ requests
    def _chunks(self, pngs: list[str]) -> list[list[str]]:
        """Requests of at most ``batch_size`` images and (with JSON overhead) the server's byte limit."""
        limit = self.limits.get("max_request_bytes")
        chunks: list[list[str]] = []
        cur: list[str] = []
        size = json_body_overhead(0)
        for p in pngs:
            need = len(p) + json_body_overhead(1)
            if limit is not None and json_body_overhead(0) + need > limit:
                raise RemoteTeacherError(f"one PNG image is {len(p)} bytes in base64, over the service's request limit "
                                         f"of {limit} bytes")
            if cur and (len(cur) >= self.batch_size or (limit is not None and size + need > limit)):
                chunks.append(cur)
                cur, size = [], json_body_overhead(0)
            cur.append(p)
            size += need
        if cur:
            chunks.append(cur)
        return chunks

    def _embed(self, field: str, path: str, items: list[str], n: int) -> np.ndarray:
        body = _json_body(field, items)
        request_id = uuid.uuid4().hex  # one per logical batch; every retry of it reuses it
        r = self._call("POST", path, content=body, request_id=request_id)
        try:
            data = r.json()
            rows = data["embeddings"]
            if data.get("encoding") != "base64" or len(rows) != n:
                raise ValueError(f"{len(rows)} embeddings for {n} inputs")
            return np.stack([decode_vector(s, self.embed_dim) for s in rows])
        except (ValueError, KeyError, TypeError) as exc:
            raise RemoteTeacherError(f"malformed answer from {self.url}{path}: {exc}") from None

    def _call(self, method: str, path: str, content: bytes | None = None, request_id: str | None = None) -> httpx.Response:
        import httpx  # imported by __init__ already

        headers = {"Content-Type": "application/json"} if content is not None else {}
        if request_id is not None:
            headers[IDEMPOTENCY_HEADER] = request_id
        last = ""
        wait: float | None = None  # what the last answer asked to wait (Retry-After)
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                _sleep(self._delay(attempt, wait))
                wait = None
            self.requests += 1
            try:
                r = self._client.request(method, path, content=content, headers=headers)
            except httpx.ConnectError as exc:  # nothing was sent
                last = f"cannot connect ({exc})"
                continue
            except httpx.TimeoutException as exc:
                self.bytes_sent += len(content or b"")
                last = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
                continue
            except httpx.TransportError as exc:
                self.bytes_sent += len(content or b"")
                last = f"connection failed ({type(exc).__name__}: {exc})"
                continue
            self.bytes_sent += len(content or b"")
            self.bytes_received += len(r.content)
            if r.status_code < 400:
                return r
            if r.status_code == 429:
                wait = self._wait_out(r, path)  # raises QueryBudgetExceeded when the refusal will not clear soon
                last = f"HTTP 429: {_error_message(r)}"
                continue
            if r.status_code in RETRY_STATUSES or _error_code(r) == "request_in_progress":
                header = _retry_after(r)
                wait = None if header is None else min(self.max_backoff, header)
                last = f"HTTP {r.status_code}: {_error_message(r)}"
                continue
            raise self._refused(r, path, content)
        hint = ("is `vl2v serve` running there, and are the host, port and scheme right?"
                if last.startswith("cannot connect") else
                "raise --teacher-opt timeout=SECONDS or retries=N, or check the service's log")
        raise RemoteTeacherError(f"embedding service {self.url}{path}: gave up after {self.retries + 1} tries; "
                                 f"last: {last}. {hint[0].upper()}{hint[1:]}")

    def _delay(self, attempt: int, wait: float | None) -> float:
        """Retry ``attempt``'s delay: full-jitter exponential backoff, at least ``wait`` (a Retry-After)."""
        cap = min(self.max_backoff, self.backoff * (2 ** (attempt - 1)))
        delay = random.uniform(0.0, cap)  # "full jitter": spreads retries of many clients apart
        return delay if wait is None else max(delay, wait)

    def _wait_out(self, r: httpx.Response, path: str) -> float | None:
        """A 429's wait in seconds (the body's ``retry_after``, else the ``Retry-After`` header; None: neither);
        :class:`QueryBudgetExceeded` for a prepaid balance exhausted or a wait longer than ``max_wait``."""
        detail = _error_detail(r)
        reason = str(detail.get("reason") or detail.get("code") or "too_many_requests")
        where = f"embedding service {self.url}{path}"
        kept = "nothing more was sent; embeddings already received are kept in the teacher store"
        if reason == "prepaid_exhausted":
            raise QueryBudgetExceeded(f"{where}: prepaid_exhausted: {_error_message(r)}; {kept}")
        try:
            wait = float(detail["retry_after"])
        except (KeyError, TypeError, ValueError):
            wait = _retry_after(r)
        if wait is not None and wait > self.max_wait:
            raise QueryBudgetExceeded(
                f"{where}: {reason}: {_error_message(r)}; waiting {wait:.0f} s is more than max_wait="
                f"{self.max_wait:g} s, so {kept}. Run again later, or raise --teacher-opt max_wait=SECONDS")
        return wait

    def _refused(self, r: httpx.Response, path: str, content: bytes | None) -> RemoteTeacherError:
        msg = _error_message(r)
        where = f"embedding service {self.url}{path}"
        if r.status_code == 401:
            return RemoteTeacherError(f"{where} rejected the API key (401: {msg}). Set {API_KEY_ENV} or "
                                      f"--teacher-opt api_key=KEY to a key the service's operator gave you")
        if r.status_code == 413:
            return RemoteTeacherError(
                f"{where}: request too large (413: {msg}). Lower --teacher-opt batch_size=N (now {self.batch_size}; "
                f"this request was {len(content or b'')} bytes); the service's limits are {self.limits}")
        return RemoteTeacherError(f"{where} refused the request (HTTP {r.status_code}: {msg})")


def _error_detail(r: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of a JSON error answer ({} if there is none)."""
    try:
        detail = r.json()["error"]
    except Exception:
        return {}
    return detail if isinstance(detail, dict) else {}


def _error_code(r: httpx.Response) -> str:
    return str(_error_detail(r).get("code", ""))


def _retry_after(r: httpx.Response) -> float | None:
    """The ``Retry-After`` header in seconds (delta-seconds only), None if absent or unreadable."""
    try:
        return max(0.0, float(r.headers["Retry-After"]))
    except (KeyError, ValueError):
        return None


def _error_message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except Exception:
        return r.text[:200] or r.reason_phrase


def _json_body(field: str, items: list[str]) -> bytes:
    return json.dumps({field: items, "encoding": "base64"}, separators=(",", ":")).encode()


def _encode_pngs(images: torch.Tensor) -> list[str]:
    """[B, 3, S, S] in [0, 1] -> base64 PNG strings (8-bit, lossless)."""
    arr = (images.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(a), "RGB").save(buf, format="PNG", compress_level=1)
        out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
    return out


def create_remote_teacher(spec: str | None, **opts: Any) -> RemoteTeacher:
    _require_httpx()  # first, as when this module imported httpx itself
    if not spec:
        raise TeacherError("the remote teacher needs the service's URL: --teacher remote:http://HOST:PORT")
    return RemoteTeacher(spec, **opts)


# ------------------------------------------------------------------ the backend: --teacher remote:URL
@config_dataclass
class RemoteOptions:
    """``--teacher-opt`` options of the ``remote`` teacher (the table above)."""

    api_key: str | None = None
    batch_size: PosInt | None = None
    timeout: Annotated[float, Field(gt=0)] | None = None
    retries: NonNegInt | None = None
    backoff: NonNegFloat | None = None
    max_backoff: NonNegFloat | None = None
    budget: NonNegInt | None = None  # image queries this process may send
    max_wait: NonNegFloat | None = None  # longest 429 Retry-After waited out (s); longer: QueryBudgetExceeded


@register_teacher("remote", white_box=False, offline=False, options=RemoteOptions,
                  summary="a `vl2v serve` embedding service: remote:http://HOST:PORT (key: api_key=... or $VL2V_API_KEY; "
                          "batch_size, timeout, retries, backoff, budget)")
def _remote(spec: str | None = None, **opts: Any) -> Teacher:
    return create_remote_teacher(spec, **opts)
