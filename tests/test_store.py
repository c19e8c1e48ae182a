"""The persistent teacher-embedding store."""


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


def test_budget_exhaustion_keeps_what_was_paid_for(tmp_path, tiny_teacher):
    from vl2v.teachers.base import QueryBudgetExceeded

    class Budgeted(type(tiny_teacher)):
        def __init__(self, budget):
            super().__init__()
            self.budget = budget
            self.used = 0

        def embed_images(self, images):
            if self.used + images.shape[0] > self.budget:
                raise QueryBudgetExceeded(f"budget {self.budget} reached after {self.used} images")
            self.used += images.shape[0]
            return super().embed_images(images)

    path = tmp_path / "s.sqlite"
    s = TeacherStore(Budgeted(budget=5), path)
    with pytest.raises(QueryBudgetExceeded):
        s.image_embeddings(keys(9), render, batch_size=2)
    assert TeacherStore(tiny_teacher, path).counts()["images"] == 4  # two full batches were committed
    s2 = TeacherStore(Budgeted(budget=5), path)
    s2.image_embeddings(keys(9), render, batch_size=2)  # the rest fits in a fresh budget
    assert s2.stats.image_queries == 5 and s2.stats.image_hits == 4


CRASHER = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from conftest import TinyTeacher
from vl2v.teachers.store import TeacherStore
s = TeacherStore(TinyTeacher(), {path!r})
print("ready", flush=True)
i = 0
while True:  # write forever, one small batch per transaction, until killed
    s.image_embeddings([(f"h{{i}}-{{j}}", None) for j in range(8)], lambda j: torch.rand(3, 24, 24), batch_size=8)
    i += 1
"""


def test_sigkill_mid_write_leaves_a_usable_store(tmp_path, tiny_teacher):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = tmp_path / "s.sqlite"
    code = CRASHER.format(tests=str(Path(__file__).parent), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"ready"
    time.sleep(1.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    s = TeacherStore(tiny_teacher, path)
    n = s.counts()["images"]
    assert n > 0 and n % 8 == 0  # only whole committed batches survive
    rows = s._conn.execute("SELECT content, view FROM images").fetchall()
    got = s.lookup_images([tuple(r) for r in rows])
    assert len(got) == n and all(v.shape == (16,) for v in got.values())
    # and the store keeps working
    s.image_embeddings(keys(3), render)
    assert s.counts()["images"] == n + 3


OPENER = r"""
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import TinyTeacher
from vl2v.teachers.store import TeacherStore
teacher = TinyTeacher()
print("ready", flush=True)
go = Path({go!r})
while not go.exists():
    time.sleep(0.001)
stores = []
for r in range({rounds}):  # every process opens the same new files at the same moment, and writes to them
    s = TeacherStore(teacher, Path({root!r}) / f"s{{r}}.sqlite")
    s.text_embeddings(["a photo of a dog"])
    stores.append(s)
print("done", flush=True)
"""


def test_processes_opening_one_new_store_at_once_all_succeed(tmp_path):
    """Data-parallel ranks and local sweep jobs open one new store file together; SQLite's switch to WAL then
    answers "database is locked" without waiting (seen in CI as a crashed rank), which the store must retry."""
    import subprocess
    import sys
    from pathlib import Path

    go = tmp_path / "go"
    code = OPENER.format(tests=str(Path(__file__).parent), go=str(go), rounds=100, root=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    for p in procs:
        assert p.stdout.readline().strip() == b"ready"
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == b"done", err.decode()[-2000:]
