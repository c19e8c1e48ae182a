"""The persistent teacher-embedding store."""

import sqlite3

import pytest
import torch

from vl2v.data.transforms import AugParams
from vl2v.teachers.store import StoreError, TeacherStore, view_id


def render(i):
    g = torch.Generator().manual_seed(i)
    return torch.rand(3, 24, 24, generator=g)


def keys(n, params=None):
    return [(f"hash{i}", params) for i in range(n)]


def test_second_run_queries_nothing(tmp_path, tiny_teacher):
    path = tmp_path / "store.sqlite"
    s1 = TeacherStore(tiny_teacher, path)
    e1 = s1.image_embeddings(keys(5), render, batch_size=2)
    t1 = s1.text_embeddings(["a photo of a cat", "a photo of a dog", "a photo of a cat"])
    assert s1.stats.image_queries == 5 and s1.stats.text_queries == 2
    s1.close()
    s2 = TeacherStore(tiny_teacher, path)
    calls = tiny_teacher.image_calls
    e2 = s2.image_embeddings(keys(5), render)
    t2 = s2.text_embeddings(["a photo of a cat", "a photo of a dog"])
    assert tiny_teacher.image_calls == calls
    assert s2.stats.image_queries == 0 and s2.stats.image_hits == 5 and s2.stats.text_hits == 2
    assert torch.equal(e1, e2) and torch.equal(t1[:2], t2)
    # values are what the teacher said, to float16 precision
    assert torch.allclose(e1, tiny_teacher.embed_images(torch.stack([render(i) for i in range(5)])), atol=2e-3)


def test_changed_teacher_never_reuses_entries(tmp_path, tiny_teacher):
    from conftest import TinyTeacher

    path = tmp_path / "store.sqlite"
    TeacherStore(tiny_teacher, path).image_embeddings(keys(3), render)
    other = TinyTeacher(size=32)  # same weights, different preprocessing -> different identity
    s = TeacherStore(other, path)
    s.image_embeddings(keys(3), lambda i: torch.rand(3, 32, 32))
    assert s.stats.image_queries == 3 and s.stats.image_hits == 0


def test_views_are_keyed_by_their_parameters(tmp_path, tiny_teacher):
    p1 = AugParams(0, 0, 1, 1, False, (0, 1, 2, 3), 1, 1, 1, 0, False)
    p2 = AugParams(0, 0, 1, 1, True, (0, 1, 2, 3), 1, 1, 1, 0, False)
    assert view_id(None) == "center" and view_id(p1) != view_id(p2)
    s = TeacherStore(tiny_teacher, tmp_path / "s.sqlite")
    s.image_embeddings([("h", p1), ("h", p2), ("h", None), ("h", p1)], render)
    assert s.stats.image_queries == 3 and s.stats.image_hits == 1
    assert s.view_params("h", view_id(p2)) == p2


def test_float32_store_is_exact(tmp_path, tiny_teacher):
    s = TeacherStore(tiny_teacher, tmp_path / "s.sqlite", dtype="float32")
    e = s.image_embeddings(keys(2), render)
    assert torch.equal(e, tiny_teacher.embed_images(torch.stack([render(0), render(1)])))


def test_not_a_database_is_refused_with_advice(tmp_path, tiny_teacher):
    bad = tmp_path / "s.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        TeacherStore(tiny_teacher, bad)


def test_read_only_store_reports_missing(tmp_path, tiny_teacher):
    path = tmp_path / "s.sqlite"
    TeacherStore(tiny_teacher, path).image_embeddings(keys(2), render)
    ro = TeacherStore(tiny_teacher, path, read_only=True)
    assert ro.image_embeddings(keys(2), render).shape == (2, 16)
    with pytest.raises(StoreError, match="missing 1 image"):
        ro.image_embeddings(keys(3), render)
