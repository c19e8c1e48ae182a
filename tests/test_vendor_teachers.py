"""The vendor teachers (``--teacher vendor:PROVIDER:MODEL``) against mocked vendor APIs, without the network.

Each provider has a hand-written fixture (tests/fixtures/vendors/PROVIDER.json) that follows its
documented request and answer format and its error answers. :class:`VendorMock` replays it through
``respx``: it checks every request has the documented shape and key, decodes the images (or reads the
texts) it carries and answers with deterministic embeddings (a fixed random projection of the SHA-256
of the image bytes or text, normalised), or with the error answer a test queued. Retries are checked
by patching tenacity's sleep, never by sleeping.
"""

from __future__ import annotations

import base64
import email
import hashlib
import io
import json
import time
from email.utils import formatdate
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

respx = pytest.importorskip("respx")
tenacity = pytest.importorskip("tenacity")

from vl2v.errors import ConfigError  # noqa: E402
from vl2v.teachers import create_teacher  # noqa: E402
from vl2v.teachers.base import QueryBudgetExceeded, TeacherError  # noqa: E402
from vl2v.teachers.store import TeacherStore  # noqa: E402
from vl2v.teachers.vendors import PROVIDERS, provider_class  # noqa: E402
from vl2v.teachers.vendors.base import VendorError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures" / "vendors"
KEY = "sk-test-0123456789abcdef"
MODELS = {"jina": "jina-clip-v2", "cohere": "embed-v4.0", "voyage": "voyage-multimodal-3",
          "nomic": "nomic-embed-vision-v1.5"}
SIZE = 32  # image_size of the tests' teachers: tiny views, fast encoding
FAST = dict(backoff=0.01, max_backoff=0.05)


def fixture(provider: str) -> dict:
    return json.loads((FIXTURES / f"{provider}.json").read_text())


def fake_vector(payload: bytes, dim: int) -> np.ndarray:
    """The mock's embedding of an image's bytes or a text: SHA-256 -> fixed random projection -> unit norm."""
    x = np.frombuffer(hashlib.sha256(payload).digest(), dtype=np.uint8).astype(np.float64) / 255.0 - 0.5
    proj = np.random.default_rng(0).standard_normal((32, dim))
    v = x @ proj
    return (v / np.linalg.norm(v)).astype(np.float32)


def shape(obj):
    """The structure of a JSON value: dict keys (recursively), a list's first item, a leaf's type."""
    if isinstance(obj, dict):
        return {k: shape(v) for k, v in sorted(obj.items())}
    if isinstance(obj, list):
        return [shape(obj[0])] if obj else []
    return type(obj).__name__


def _from_data_uri(uri: str, mime: str) -> bytes:
    prefix = f"data:{mime};base64,"
    assert uri.startswith(prefix), uri[:40]
    return base64.b64decode(uri[len(prefix):])


# ------------------------------------------------------------------ each provider's documented request format
def parse_request(provider: str, request: httpx.Request) -> tuple[str, dict, list]:
    """(kind, body as JSON-like dict, items): items are image bytes or texts, in order."""
    if provider == "nomic" and request.url.path.endswith("/image"):
        msg = email.message_from_bytes(b"Content-Type: " + request.headers["content-type"].encode() + b"\r\n\r\n"
                                       + request.content)
        fields, images = {}, []
        for part in msg.get_payload():
            name = part.get_param("name", header="content-disposition")
            data = part.get_payload(decode=True)
            if name == "images":
                assert part.get_content_type() in ("image/jpeg", "image/png")
                images.append(data)
            else:
                fields[name] = data.decode()
        return "images", {**fields, "images": ["<file part>"] * len(images)}, images
    body = json.loads(request.content)
    if provider == "jina":
        kinds = {"image" if "image" in it else "text" for it in body["input"]}
        assert len(kinds) == 1
        kind = kinds.pop()
        items = [base64.b64decode(it["image"]) if kind == "image" else it["text"] for it in body["input"]]
        return kind + "s", body, items
    if provider == "cohere":
        if "images" in body:
            return "images", body, [_from_data_uri(u, "image/png") for u in body["images"]]
        return "texts", body, list(body["texts"])
    if provider == "voyage":
        parts = [inp["content"][0] for inp in body["inputs"]]
        if parts[0]["type"] == "image_base64":
            return "images", body, [_from_data_uri(p["image_base64"], "image/png") for p in parts]
        return "texts", body, [p["text"] for p in parts]
    assert provider == "nomic"
    return "texts", body, list(body["texts"])


def fill_response(provider: str, template: dict, vectors: list[list[float]]) -> dict:
    """The fixture's documented answer with ``vectors`` in it."""
    out = json.loads(json.dumps(template))
    if provider in ("jina", "voyage"):
        item = out["data"][0]
        out["data"] = [{**item, "index": i, "embedding": v} for i, v in enumerate(vectors)]
    elif provider == "cohere":
        out["embeddings"] = {"float": vectors}
    else:
        out["embeddings"] = vectors
    return out


class VendorMock:
    """A vendor API replayed from its fixture through respx; ``plan`` queues faults for the next requests."""

    def __init__(self, provider: str, router, dim: int) -> None:
        self.provider, self.fx, self.dim = provider, fixture(provider), dim
        self.plan: list = []  # error names of the fixture, "timeout", or a callable(request) -> httpx.Response
        self.requests: list[tuple[str, dict, list]] = []
        self.routes = [router.post(url).mock(side_effect=self) for url in dict.fromkeys(self.fx["routes"].values())]

    @property
    def calls(self) -> int:
        return sum(r.call_count for r in self.routes)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers.get("authorization") == f"Bearer {KEY}"
        if self.plan:
            fault = self.plan.pop(0)
            if callable(fault):
                return fault(request)
            if fault == "timeout":
                raise httpx.ReadTimeout("injected", request=request)
            err = self.fx["errors"][fault]
            body = json.loads(json.dumps(err["body"]).replace("{key}", KEY))
            return httpx.Response(err["status"], json=body, headers=err.get("headers", {}))
        kind, body, items = parse_request(self.provider, request)
        assert shape(body) == shape(self.fx["request"][kind]), (kind, body)
        self.requests.append((kind, body, items))
        vectors = [fake_vector(it if isinstance(it, bytes) else it.encode(), self.dim).tolist() for it in items]
        return httpx.Response(200, json=fill_response(self.provider, self.fx["response"], vectors))


@pytest.fixture
def router():
    with respx.mock(assert_all_called=False) as r:
        yield r


@pytest.fixture
def sleeps(monkeypatch):
    """tenacity's sleep, patched: the waits it was asked for, none of them slept."""
    waits: list[float] = []
    monkeypatch.setattr(tenacity.nap, "sleep", waits.append)
    return waits


def make(provider: str, router, **opts):
    """(teacher, mock) for ``provider``'s default test model."""
    opts.setdefault("image_size", SIZE)
    teacher = create_teacher(f"vendor:{provider}:{MODELS[provider]}", api_key=KEY, **opts)
    return teacher, VendorMock(provider, router, teacher.embed_dim)


def images(n: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float().div(255)


# ------------------------------------------------------------------ the documented formats
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_requests_follow_the_documented_format_and_answers_are_read(provider, router):
    t, mock = make(provider, router)
    x = images(3)
    emb = t.embed_images(x)
    assert emb.shape == (3, t.embed_dim) and emb.dtype == torch.float32
    assert {k for k, _, _ in mock.requests} == {"images"}
    items = [it for _, _, chunk in mock.requests for it in chunk]  # Cohere: one image per request
    assert len(items) == 3 and all(body["model"] == MODELS[provider] for _, body, _ in mock.requests)
    for row, data in zip(emb, items):  # the vectors of the images that were sent, in order, normalised
        assert torch.allclose(row, torch.from_numpy(fake_vector(data, t.embed_dim)), atol=1e-6)
        im = Image.open(io.BytesIO(data))
        assert im.size == (SIZE, SIZE) and im.format.lower() == t.image_format
    texts = ["a photo of a dog", "a sketch of a cat"]
    txt = t.embed_texts(texts)
    kind, body, items = mock.requests[-1]
    assert kind == "texts" and items == texts
    assert torch.allclose(txt[1], torch.from_numpy(fake_vector(texts[1].encode(), t.embed_dim)), atol=1e-6)
    assert (t.image_queries, t.text_queries) == (3, 2) and t.bytes_sent > 0


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_batches_stay_within_the_documented_limits(provider, router):
    t, mock = make(provider, router)
    cls = provider_class(provider)
    n = 2 * cls.max_images_per_request + 1
    t.embed_images(images(n))
    sizes = [len(items) for kind, _, items in mock.requests if kind == "images"]
    assert sum(sizes) == n and max(sizes) <= cls.max_images_per_request and len(sizes) == 3
    t.embed_texts([f"a photo of thing {i}" for i in range(cls.max_texts_per_request + 1)])
    sizes = [len(items) for kind, _, items in mock.requests if kind == "texts"]
    assert sizes == [cls.max_texts_per_request, 1]


def test_a_large_input_is_resized_to_the_vendors_limit_and_the_view_is_in_the_identity(router):
    t, mock = make("jina", router, image_size=600)  # jina-clip-v2 takes 512 x 512
    assert t.sent_side == 512 and "view=jpeg-q95@512px<600px" in t.identity()
    t.embed_images(images(1, size=600))
    im = Image.open(io.BytesIO(mock.requests[-1][2][0]))
    assert im.size == (512, 512) and im.format == "JPEG"
    views = {create_teacher("vendor:jina:jina-clip-v2", api_key=KEY, **o).identity()
             for o in ({}, {"image_format": "png"}, {"jpeg_quality": "80"}, {"image_size": "224"})}
    assert len(views) == 4  # every view its own store key
    assert all(KEY not in v for v in views)


# ------------------------------------------------------------------ errors: one line each
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_a_bad_key_is_a_one_line_error_that_never_shows_the_key(provider, router):
    t, mock = make(provider, router)
    mock.plan = ["bad_key"]
    with pytest.raises(VendorError) as info:
        t.embed_images(images(1))
    msg = str(info.value)
    assert "\n" not in msg and "API key" in msg and provider_class(provider).env_vars[0] in msg
    assert KEY not in msg and mock.calls == 1  # not retried
    assert isinstance(info.value, ConfigError)  # printed as one line by the CLI, exit code 2


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_quota_exhausted_is_a_one_line_error_and_not_retried(provider, router, sleeps):
    t, mock = make(provider, router)
    mock.plan = ["quota"]
    with pytest.raises(VendorError, match="quota or credit exhausted") as info:
        t.embed_texts(["a photo of a dog"])
    assert "\n" not in str(info.value) and mock.calls == 1 and sleeps == []


def test_a_trial_keys_monthly_limit_is_the_quota_not_a_rate_limit(router, sleeps):
    t, mock = make("cohere", router)
    mock.plan = ["quota_trial"]
    with pytest.raises(VendorError, match="quota or credit exhausted"):
        t.embed_images(images(1))
    assert mock.calls == 1 and sleeps == []


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_a_model_the_api_does_not_know_is_a_one_line_error(provider, router):
    t, mock = make(provider, router)
    mock.plan = ["unknown_model"]
    with pytest.raises(VendorError, match="does not know model") as info:
        t.embed_texts(["a dog"])
    assert "\n" not in str(info.value)


def test_a_model_missing_from_the_table_fails_before_any_request(router):
    with pytest.raises(TeacherError, match="no model 'jina-clip-v9'.*known: jina-clip-v2"):
        create_teacher("vendor:jina:jina-clip-v9", api_key=KEY)
    with pytest.raises(TeacherError, match="unknown vendor 'acme'"):
        create_teacher("vendor:acme:x", api_key=KEY)
    with pytest.raises(TeacherError, match="PROVIDER:MODEL"):
        create_teacher("vendor:jina", api_key=KEY)


def test_no_key_names_the_environment_variables(monkeypatch):
    for v in ("CO_API_KEY", "COHERE_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(TeacherError, match="CO_API_KEY or COHERE_API_KEY or pass --teacher-opt api_key=KEY"):
        create_teacher("vendor:cohere:embed-v4.0")
    monkeypatch.setenv("COHERE_API_KEY", KEY)
    assert create_teacher("vendor:cohere:embed-v4.0").model == "embed-v4.0"


def test_options_are_typed_before_anything_is_built():
    with pytest.raises(ConfigError, match="budget_usd"):
        create_teacher("vendor:jina:jina-clip-v2", api_key=KEY, budget_usd="five")
    with pytest.raises(ConfigError, match="has no option 'budget'"):
        create_teacher("vendor:jina:jina-clip-v2", api_key=KEY, budget="5")


# ------------------------------------------------------------------ retries (tenacity), Retry-After
@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_429_waits_what_retry_after_says_then_succeeds(provider, router, sleeps):
    t, mock = make(provider, router, **FAST)
    mock.plan = ["rate_limited"]
    emb = t.embed_images(images(1))
    assert sleeps == [7.0]  # the fixture's Retry-After: 7, not the (tiny) backoff
    assert mock.calls == 2 and t.retried == 1 and emb.shape == (1, t.embed_dim)


def test_5xx_and_a_timeout_are_retried_with_backoff_then_succeed(router, sleeps):
    t, mock = make("voyage", router, **FAST)
    mock.plan = ["server_error", "timeout", "server_error"]
    emb = t.embed_texts(["a dog", "a cat"])
    assert mock.calls == 4 and len(sleeps) == 3 and all(0 <= s <= 0.05 for s in sleeps)
    assert torch.allclose(emb[0], torch.from_numpy(fake_vector(b"a dog", t.embed_dim)), atol=1e-6)


def test_persistent_5xx_gives_up_with_a_one_line_error(router, sleeps):
    t, mock = make("jina", router, retries=2, **FAST)
    mock.plan = ["server_error"] * 3
    with pytest.raises(VendorError, match="gave up after 3 tries; last: HTTP 503") as info:
        t.embed_images(images(1))
    assert "\n" not in str(info.value) and mock.calls == 3 and len(sleeps) == 2


def test_a_retry_after_past_ten_minutes_stops_at_once(router, sleeps):
    t, mock = make("nomic", router)
    mock.plan = [lambda req: httpx.Response(429, headers={"Retry-After": "3600"}, json={"detail": "slow down"})]
    with pytest.raises(VendorError, match="asks to wait 3600 s"):
        t.embed_texts(["a dog"])
    assert sleeps == [] and mock.calls == 1


def test_retry_after_as_an_http_date_is_honoured(router, sleeps):
    t, mock = make("cohere", router, **FAST)
    when = formatdate(time.time() + 30, usegmt=True)
    mock.plan = [lambda req: httpx.Response(503, headers={"Retry-After": when}, json={"message": "busy"})]
    t.embed_texts(["a dog"])
    assert len(sleeps) == 1 and 25 <= sleeps[0] <= 31


# ------------------------------------------------------------------ answers that are not what was documented
def test_an_answer_that_is_not_json_is_a_one_line_error(router):
    t, mock = make("jina", router)
    mock.plan = [lambda req: httpx.Response(200, text="<html>\n<body>gateway error</body></html>")]
    with pytest.raises(VendorError, match="not JSON") as info:
        t.embed_images(images(1))
    assert "\n" not in str(info.value)


def test_an_answer_without_the_documented_fields_is_a_one_line_error(router):
    t, mock = make("cohere", router)
    mock.plan = [lambda req: httpx.Response(200, json={"id": "x", "embeddings": {"int8": [[1, 2]]}})]
    with pytest.raises(VendorError, match="does not parse as documented"):
        t.embed_images(images(1))


def test_embeddings_of_the_wrong_size_are_refused(router):
    t, mock = make("voyage", router)
    short = fill_response("voyage", mock.fx["response"], [[0.1] * (t.embed_dim - 1)])
    mock.plan = [lambda req: httpx.Response(200, json=short)]
    with pytest.raises(VendorError, match=f"has {t.embed_dim - 1}-d embeddings, voyage-multimodal-3 has 1024"):
        t.embed_images(images(1))
    two = fill_response("voyage", mock.fx["response"], [[0.1] * t.embed_dim] * 2)
    mock.plan = [lambda req: httpx.Response(200, json=two)]
    with pytest.raises(VendorError, match="2 images embeddings came back for 1 inputs"):
        t.embed_images(images(1))


# ------------------------------------------------------------------ prices and the budget
def test_price_reads_the_table_and_the_overrides(router):
    t, _ = make("voyage", router, image_size=224)
    p = t.price()
    assert set(p) == {"image", "text", "currency", "read_on", "source"} and p["currency"] == "USD"
    assert p["image"] == pytest.approx(224 * 224 * 0.60 / 1e9) and p["source"] == "https://docs.voyageai.com/pricing"
    assert p["read_on"] == "2026-12-05" and p["text"] == pytest.approx(10 * 0.12 / 1e6)
    t2, _ = make("jina", router, image_size=512, price_image=0.001)
    assert t2.price()["image"] == 0.001 and t2.price()["source"].startswith("--teacher-opt price_image")
    nomic, _ = make("nomic", router)
    assert nomic.price() is None and nomic.estimate_usd(3) is None
    assert make("nomic", router, price_image=0.001, price_text=0.0001)[0].estimate_usd(2, ["a", "b"]) == \
        pytest.approx(0.0022)
    with pytest.raises(TeacherError, match="budget_usd needs a price"):
        make("nomic", router, budget_usd=1)


def test_budget_usd_refuses_before_sending_a_call_that_would_pass_it(router):
    t, mock = make("jina", router, budget_usd=0.025, price_image=0.01, price_text=0.001)
    t.embed_images(images(2))
    assert mock.calls == 1 and t.spent_usd == pytest.approx(0.02)
    with pytest.raises(QueryBudgetExceeded, match="nothing was sent"):
        t.embed_images(images(1))
    assert mock.calls == 1  # refused before sending
    t.embed_texts(["a dog"])  # 0.001 still fits
    assert mock.calls == 2 and t.spent_usd == pytest.approx(0.021)


def test_the_store_keeps_every_batch_paid_for_when_the_budget_runs_out(router, tmp_path):
    t, mock = make("cohere", router, budget_usd=0.05, price_image=0.01, price_text=0.0)
    store = TeacherStore(t, tmp_path / "store.sqlite")
    x = images(8)
    keys = [(f"img{i}", None) for i in range(8)]
    with pytest.raises(QueryBudgetExceeded):
        store.image_embeddings(keys, render=lambda i: x[i], batch_size=3)
    assert store.counts()["images"] == 3 and mock.calls == 3  # 3 + 3 would pass $0.05: the 2nd batch was not sent
    again = TeacherStore(create_teacher("vendor:cohere:embed-v4.0", api_key=KEY, image_size=SIZE),
                         tmp_path / "store.sqlite")
    assert again.counts()["images"] == 3  # the same view, the same key: already paid for


# ------------------------------------------------------------------ end to end: train twice, pay once
#: (provider, model, embedding size, key variable): every vendor's fixture is run end to end
E2E_VENDORS = [("jina", "jina-clip-v2", 1024, "JINA_API_KEY"), ("cohere", "embed-v4.0", 1536, "CO_API_KEY"),
               ("voyage", "voyage-multimodal-3", 1024, "VOYAGE_API_KEY"),
               ("nomic", "nomic-embed-vision-v1.5", 768, "NOMIC_API_KEY")]


@pytest.mark.parametrize("provider,model,dim,env", E2E_VENDORS, ids=[v[0] for v in E2E_VENDORS])
def test_cli_train_then_an_identical_run_makes_zero_http_calls(image_folder, tmp_path, router, monkeypatch,
                                                               provider, model, dim, env):
    from vl2v.cli import main

    monkeypatch.setenv(env, KEY)
    mock = VendorMock(provider, router, dim)
    store = tmp_path / "store.sqlite"
    price_opts = ["price_image=0.0004", "price_text=0.00002"] if provider == "nomic" else []  # no published price

    def train(out):
        return main(["train", "--data", str(image_folder), "--teacher", f"vendor:{provider}:{model}",
                     "--teacher-opt", "image_size=32", "budget_usd=5", *price_opts, "--store", str(store), "--algorithm", "adip",
                     "--target", "photo", "--no-pretrained", "--steps", "2", "--frozen-steps", "2", "--batch-size",
                     "4", "--image-size", "32", "--eval-every", "2", "--jobs", "1", "--out", str(out)])

    assert train(tmp_path / "first") == 0
    paid = mock.calls
    assert paid > 0 and any(k == "images" for k, _, _ in mock.requests) and any(k == "texts" for k, _, _ in mock.requests)
    assert train(tmp_path / "second") == 0
    assert mock.calls == paid  # the store had every embedding: zero HTTP calls
    assert (tmp_path / "second" / "adip" / "target-1-photo" / "seed0" / "done").exists()
    for f in (tmp_path / "first").rglob("*.json*"):
        assert KEY not in f.read_text()


@pytest.mark.parametrize("provider,model,dim,env", E2E_VENDORS, ids=[v[0] for v in E2E_VENDORS])
def test_dry_run_predicts_a_vendor_runs_queries_exactly_and_its_cost_to_the_cent(image_folder, tmp_path, router,
                                                                                   monkeypatch, capsys, provider,
                                                                                   model, dim, env):
    """`vl2v train --dry-run` against the mocked Jina API: no HTTP call, then the run sends exactly the image and
    text items the dry run counted, and costs what it said, to the cent, at the price it printed."""
    import json

    from vl2v.cli import main

    monkeypatch.setenv(env, KEY)
    mock = VendorMock(provider, router, dim)
    store, out = tmp_path / "store.sqlite", tmp_path / "runs"
    price_opts = ["price_image=0.0004", "price_text=0.00002"] if provider == "nomic" else []  # no published price
    argv = ["train", "--data", str(image_folder), "--teacher", f"vendor:{provider}:{model}", "--teacher-opt",
            "image_size=32", *price_opts, "--store", str(store), "--algorithm", "zeroshot", "adip", "--target", "photo",
            "--no-pretrained", "--steps", "2", "--frozen-steps", "2", "--batch-size", "4", "--image-size", "32",
            "--eval-every", "2", "--views", "2", "--jobs", "1", "--out", str(out)]
    assert main(argv + ["--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert mock.calls == 0  # a dry run sends nothing
    sent = {"image": 0, "text": 0}
    assert main(argv) == 0
    for kind, _, items in mock.requests:
        sent["image" if kind == "images" else "text"] += len(items)
    assert sent == plan["to_pay"]
    price = plan["price"]
    assert round(sent["image"] * price["image"] + sent["text"] * price["text"], 2) == round(plan["cost"], 2)
    finals = [json.loads(p.read_text()) for p in out.rglob("final.json")]
    assert round(sum(f["teacher_bill"]["cost"]["paid"] for f in finals), 2) == round(plan["cost"], 2)
