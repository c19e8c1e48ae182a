"""Streaming teacher-embedding precomputation: complete, reused by training, resumable."""

import pytest

from vl2v.data.folder import scan_folder
from vl2v.teachers.base import QueryBudgetExceeded
from vl2v.teachers.precompute import precompute
from vl2v.teachers.store import TeacherStore


def test_precompute_then_training_queries_nothing(image_folder, tmp_path, tiny_teacher):
    from helpers import tiny_cfg
    from vl2v.experiment.run import run_experiment

    store_path = tmp_path / "store.sqlite"
    scan = scan_folder(image_folder, verify=False)
    stats = precompute(scan, TeacherStore(tiny_teacher, store_path), views=3, shard_size=5, batch_size=4)
    n = len(scan.items)
    assert stats.images == stats.decoded == n and stats.views == 4 * n and stats.queries == 4 * n
    cfg = tiny_cfg(image_folder, tmp_path / "runs", ["adip", "kd", "zeroshot"], targets=(0,))
    from dataclasses import replace

    cfg = replace(cfg, store=str(store_path), views=3)
    res = run_experiment(cfg, log=lambda s: None)
    for f in res["finals"]:
        assert f["queries"]["image_queries"] == 0, f["algorithm"]
    # a second precompute pass decodes nothing: the path index knows every file
    again = precompute(scan, TeacherStore(tiny_teacher, store_path), views=3)
    assert again.decoded == 0 and again.queries == 0 and again.hits == 4 * n


def test_interrupted_precompute_resumes_where_it_stopped(image_folder, tmp_path, tiny_teacher):
    class Budgeted(type(tiny_teacher)):
        def __init__(self, budget):
            super().__init__()
            self.left = budget

        def embed_images(self, images):
            if images.shape[0] > self.left:
                raise QueryBudgetExceeded("budget")
            self.left -= images.shape[0]
            return super().embed_images(images)

    path = tmp_path / "s.sqlite"
    scan = scan_folder(image_folder, verify=False)
    with pytest.raises(QueryBudgetExceeded):
        precompute(scan, TeacherStore(Budgeted(20), path), views=1, shard_size=6, batch_size=4)
    first = TeacherStore(tiny_teacher, path).counts()["images"]
    assert 0 < first <= 20
    stats = precompute(scan, TeacherStore(tiny_teacher, path), views=1, shard_size=6, batch_size=4)
    assert stats.queries == 2 * len(scan.items) - first  # only what was missing
    assert stats.decoded < len(scan.items)  # finished shards were not decoded again


def test_cli_embed(image_folder, tmp_path, capsys):
    from vl2v.cli import main

    rc = main(["embed", "--data", str(image_folder), "--teacher", "tiny-test", "--store", str(tmp_path / "s.sqlite"),
               "--views", "2"])
    assert rc == 0
    assert "54 images (54 decoded, 0 unreadable skipped), 162 views: 162 teacher queries" in capsys.readouterr().out
