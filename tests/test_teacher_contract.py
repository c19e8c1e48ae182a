"""The contract every registered teacher backend keeps, checked on small offline builds of each.

conse (the real offline teacher), lit (the LiT teacher built from the fixture pool in tests/helpers.py), openclip (a tiny random-weight architecture), transformers (a tiny
random CLIPModel saved to a temporary folder), remote (a client of an in-process `vl2v serve` of the
tiny test teacher), vendor (jina-clip-v2 against test_vendor_teachers' respx mock of Jina's API), privileged (the
diagnostic teacher over the tiny-test base, bound to a tiny generated dataset's splits) and the
test suite's own tiny-test backend.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vl2v.teachers import Teacher, create_teacher, list_teachers
from vl2v.teachers.base import TeacherError
from vl2v.teachers.blackbox import BlackBoxTeacher
from vl2v.teachers.registry import TeacherInfo
from vl2v.utils.extras import MissingExtraError

TINY_CLIP = {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TEXTS = ["a photo of a dog", "a sketch of a cat", "a painting of a big elephant"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """backend -> (teacher string, options) that builds it offline (a callable in place of the string: built on
first use); remote and vendor are built from their service fixtures in build(). Every registered backend needs
one: build() fails for a backend that has none."""
    root = tmp_path_factory.mktemp("contract")
    out = {"conse": ("conse", {"k": 5}), "tiny-test": ("tiny-test", {}), "_root": root,
           "privileged": ("privileged", {"alpha": 0.5, "base": "tiny-test", "cache": False})}

    from helpers import build_fixture_teacher

    # built on first use only (a fixture build takes seconds): the spec string is resolved by _text()
    out["lit"] = (lambda: f"lit:{build_fixture_teacher(root / 'lit')}", {})

    import open_clip

    (root / "vl2v-contract-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(root / "vl2v-contract-clip.json")
    out["openclip"] = ("openclip:vl2v-contract-clip:none", {})

    def hf_clip() -> str:  # built on first use; without the hf extra, the transformers contract is skipped (said why)
        from helpers import build_clip

        return f"transformers:{build_clip(root / 'hf-clip')}"

    out["transformers"] = (hf_clip, {})
    yield out


@pytest.fixture(scope="module")
def remote_service(tmp_path_factory):
    pytest.importorskip("fastapi")
    from conftest import TinyTeacher
    from vl2v.serving.keys import add_key
    from vl2v.serving.live import LiveServer
    from vl2v.serving.service import ServiceConfig, create_app

    data = tmp_path_factory.mktemp("serve")
    token = add_key(data / "keys.txt", "contract")
    app = create_app(TinyTeacher(), ServiceConfig(data, max_batch_images=2), name="tiny-test")
    with LiveServer(app, log_level="critical") as srv:
        yield f"remote:{srv.url}", {"api_key": token}


@pytest.fixture
def vendor_service():
    """Jina's API mocked (respx) for the length of one test: the vendor backend's offline build."""
    respx = pytest.importorskip("respx")
    pytest.importorskip("tenacity")
    from test_vendor_teachers import KEY, VendorMock

    with respx.mock(assert_all_called=False) as router:
        VendorMock("jina", router, dim=1024)
        yield "vendor:jina:jina-clip-v2", {"api_key": KEY, "image_size": 32}


_BUILT: dict[str, Teacher] = {}
_TEXT: dict[str, str] = {}


def _text(name: str, specs) -> str:
    """The teacher string of ``specs[name]``; a callable there builds what it names once."""
    text = specs[name][0]
    if callable(text):
        if name not in _TEXT:
            _TEXT[name] = text()
        return _TEXT[name]
    return text


def build(name: str, specs, request) -> Teacher:
    if name == "remote":
        text, opts = request.getfixturevalue("remote_service")
        return create_teacher(text, **opts)  # a new client each time: cheap
    if name == "vendor":
        text, opts = request.getfixturevalue("vendor_service")
        return create_teacher(text, **opts)  # no request until the first embed call
    if name not in specs:  # a registered backend with no offline build here fails: never skipped unseen
        pytest.fail(f"teacher backend {name!r} has no offline fixture: add one to specs() in tests/test_teacher_contract.py "
                    "(a tiny or local build, or a service fixture handled in build())", pytrace=False)
    if name not in _BUILT:
        _BUILT[name] = _create(name, specs)
    return _BUILT[name]


def _create(name: str, specs) -> Teacher:
    torch.manual_seed(0)
    t = create_teacher(_text(name, specs), **specs[name][1])
    if name == "privileged":  # trained per experiment: bound here to a tiny generated dataset's splits
        from conftest import build_image_folder
        from vl2v.data.dataset import load_domain_data
        from vl2v.teachers.privileged import bind_to_experiment

        data = load_domain_data(build_image_folder(specs["_root"] / "privileged-data", per_class=4))
        bind_to_experiment(t, data, 0, ["cat", "dog", "horse"], ["a photo of a {c}."], log=lambda s: None)
    return t


BACKENDS = [t.name for t in list_teachers()]


def test_every_backend_registers_typed_info():
    assert {"conse", "openclip", "transformers", "remote", "vendor"} <= set(BACKENDS)
    for info in list_teachers():
        assert isinstance(info, TeacherInfo) and callable(info.factory) and info.summary
        assert isinstance(info.white_box, bool) and isinstance(info.offline, bool)


def test_every_backend_registers_beside_its_code():
    """Each built-in backend's factory and options class live in the module that implements it, and the
    registry module imports no backend (timm's pattern: vl2v/teachers/__init__.py names the backend modules)."""
    import ast
    import inspect

    from vl2v.teachers import BACKENDS, registry

    builtin = [i for i in list_teachers() if i.factory.__module__.startswith("vl2v.")]
    assert list(dict.fromkeys(i.factory.__module__ for i in builtin)) == list(BACKENDS)  # that order, each used
    for info in builtin:
        assert info.options is None or info.options.__module__ == info.factory.__module__, info.name
    imported = set()
    for node in ast.walk(ast.parse(inspect.getsource(registry))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vl2v"):
            imported.add(node.module)
    assert imported <= {"vl2v.config", "vl2v.errors", "vl2v.registry", "vl2v.teachers.base",
                        "vl2v.teachers.blackbox"}, imported


def test_a_backend_without_an_offline_fixture_fails(specs, request):
    """The contract is never skipped for lack of a fixture: a new backend fails until it gets one."""
    with pytest.raises(pytest.fail.Exception, match="has no offline fixture"):
        build("not-a-fixture-backend", specs, request)


def _images(n: int, size: int, seed: int) -> torch.Tensor:
    # 8-bit values, so the remote teacher's lossless PNG transport does not change them
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float().div(255)


def _unit(x: torch.Tensor) -> bool:
    return bool(torch.allclose(x.norm(dim=1), torch.ones(x.shape[0]), atol=1e-5))


@pytest.mark.parametrize("name", BACKENDS)
def test_teacher_contract(name, specs, request):
    t = build(name, specs, request)
    assert isinstance(t, Teacher) and t.backend == name
    d, s = t.embed_dim, t.image_size
    assert isinstance(d, int) and d > 0 and isinstance(s, int) and s > 0

    x = _images(3, s, 0)
    img = t.embed_images(x)
    assert img.shape == (3, d) and img.dtype == torch.float32 and img.device.type == "cpu"
    assert not img.requires_grad and _unit(img)
    assert torch.equal(t.embed_images(x), img)  # deterministic
    assert torch.allclose(t.embed_images(x[1:2]), img[1:2], atol=1e-5)  # a batch is embedded like its items
    assert not torch.allclose(img[0], img[1])

    txt = t.embed_texts(TEXTS)
    assert txt.shape == (3, d) and txt.dtype == torch.float32 and not txt.requires_grad and _unit(txt)
    assert torch.equal(t.embed_texts(list(TEXTS)), txt)
    assert torch.allclose(t.embed_texts(TEXTS[2:]), txt[2:], atol=1e-5)

    assert t.embed_images(torch.zeros(0, 3, s, s)).shape == (0, d)
    if name != "tiny-test":  # the test-only teacher does not handle empty text lists
        assert t.embed_texts([]).shape == (0, d)

    ident = t.identity()
    assert isinstance(ident, str) and ident and t.identity() == ident and t.describe().startswith(ident)

    if t.white_box:
        enc = t.image_encoder()
        assert isinstance(enc, nn.Module)
        with torch.no_grad():
            assert torch.allclose(F.normalize(enc(x).float(), dim=-1), img, atol=1e-5)
    else:
        with pytest.raises(TeacherError):
            t.image_encoder()
    assert t.to("cpu") is t

    bb = BlackBoxTeacher(t)
    assert not bb.white_box and bb.identity() == ident and (bb.embed_dim, bb.image_size) == (d, s)
    assert torch.equal(bb.embed_images(x), img) and bb.image_queries == 3
    with pytest.raises(TeacherError):
        bb.image_encoder()


@pytest.mark.parametrize("name", [n for n in BACKENDS if n != "conse"])
def test_identity_is_stable_across_builds(name, specs, request):
    """The store keys on identity(): the same build gives the same string (ConSE: see the golden check)."""
    a = build(name, specs, request)
    if name in specs:
        b = _create(name, specs)
    else:
        b = build(name, specs, request)
    assert a.identity() == b.identity()


def test_missing_hf_extra_is_a_one_line_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "transformers" else real(name, *a, **k))
    with pytest.raises(MissingExtraError, match=r"vl2v\[hf\]") as info:
        create_teacher("transformers:x")
    assert "\n" not in str(info.value)
