"""The data pipeline: streamed vs in-memory images, loader workers, same seed -> same numbers.

Every random choice is drawn in the main process before loader workers render,
so 0, 1 or 2 workers and in-memory or streamed images give identical records,
and a checkpoint taken while workers render ahead saves the data-order state of
the step it belongs to (a resumed run continues exactly).
"""

import json
from pathlib import Path

import pytest
import torch

from vl2v.config import ExperimentConfig, Schedule, TrainConfig
from vl2v.data.dataset import ImageBank, load_domain_data
from vl2v.data.folder import scan_folder
from vl2v.data.loader import RenderRequest, render_stream
from vl2v.data.transforms import render_view, render_view_u8, sample_aug_params, teacher_view, teacher_view_u8
from vl2v.experiment.run import run_experiment
from vl2v.training.checkpoint import load_state


def test_streamed_bank_gives_the_same_images_hashes_and_shapes(image_folder):
    scan = scan_folder(image_folder, verify=False)
    mem = ImageBank.load(scan, max_side=24, mode="memory")
    stream = ImageBank.load(scan, max_side=24, mode="stream", workers=2)
    assert not mem.streamed and stream.streamed and stream.images is None
    assert mem.hashes == stream.hashes and mem.shapes == stream.shapes
    assert [r.path for r in mem.records] == [r.path for r in stream.records]
    for i in range(len(mem)):
        assert torch.equal(mem.image(i), stream.image(i))
        assert mem.aspect(i) == mem.image(i).shape[2] / mem.image(i).shape[1]
    # auto: streams only above the memory budget
    assert not ImageBank.load(scan, max_side=24, mode="auto").streamed
    assert ImageBank.load(scan, max_side=24, mode="auto", memory_budget=1).streamed


def test_unreadable_file_is_skipped_in_both_modes(image_folder):
    bad = image_folder / "art" / "cat" / "zz_broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    scan = scan_folder(image_folder, verify=False)
    for mode, workers in (("memory", 0), ("stream", 2)):
        bank = ImageBank.load(scan, mode=mode, workers=workers)
        assert [s.path for s in bank.skipped] == ["art/cat/zz_broken.png"]
        assert "art/cat/zz_broken.png" not in [r.path for r in bank.records]


def test_uint8_views_equal_the_float_views():
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8, generator=g)
    for p in (None, sample_aug_params(g, aspect=56 / 40), sample_aug_params(g, aspect=56 / 40)):
        assert torch.equal(render_view_u8(img, p, 32).float().div_(255.0), render_view(img, p, 32))
        assert torch.equal(teacher_view_u8(img, p, 24).float().div_(255.0), teacher_view(img, p, 24))


def test_render_stream_keeps_request_order_whatever_the_workers(image_folder):
    data = load_domain_data(image_folder)
    g = torch.Generator().manual_seed(1)
    reqs = [RenderRequest((("student", 16, tuple((i, sample_aug_params(g)) for i in range(k, k + 3))),
                           ("teacher", 20, ()))) for k in range(0, 12, 3)]
    ref = list(render_stream(data.bank, reqs, workers=0))
    for w in (1, 2):
        got = list(render_stream(data.bank, iter(reqs), workers=w))
        assert len(got) == len(ref)
        for a, b in zip(ref, got):
            assert torch.equal(a[0], b[0]) and a[1] is None and b[1] is None


def _config(folder: Path, out: Path, workers: int, mode: str, views: int = 2, steps: int = 5) -> ExperimentConfig:
    train = TrainConfig(schedule=Schedule(steps=steps, frozen_steps=4, lr=1e-3, frozen_lr=1e-2), batch_size=4,
                        eval_every=2, image_size=32, device="cpu")
    return ExperimentConfig(dataset=None, data_dir=str(folder), out_dir=str(out), algorithms=("erm_ft", "adip"),
                            targets=(0,), student_pretrained=False, store="memory", teacher="tiny-test", train=train, views=views,
                            workers=workers, data_mode=mode)


def _records(out: Path) -> list[dict]:
    recs = []
    for f in sorted(out.rglob("results.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            recs.append({k: v for k, v in r.items()
                         if k not in ("time", "wall_time", "args") and not k.startswith("teacher_")})
    return recs


@pytest.mark.parametrize("workers,mode", [(1, "memory"), (2, "memory"), (2, "stream")])
def test_same_seed_same_records_whatever_the_workers_and_data_mode(image_folder, tmp_path, workers, mode):
    """ERM (a fresh augmentation every step) and ADiP (stored views) give identical records."""
    run_experiment(_config(image_folder, tmp_path / "ref", 0, "memory"), log=lambda *_: None)
    run_experiment(_config(image_folder, tmp_path / "got", workers, mode), log=lambda *_: None)
    ref, got = _records(tmp_path / "ref"), _records(tmp_path / "got")
    assert len(ref) == len(got) > 4
    assert ref == got


class _Crash(RuntimeError):
    pass


def test_checkpoint_taken_while_workers_render_ahead_resumes_exactly(image_folder, tmp_path, monkeypatch):
    """Workers draw ahead of the step; the checkpoint of step s still holds the data-order state of step s."""
    from vl2v.training import stages as loop  # the stage runner evaluates and checkpoints

    real = loop.StageRunner._evaluate_and_checkpoint
    calls = {"n": 0}

    def crash_after_second_checkpoint(self, *a, **k):
        real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Crash()

    def last_state(workers: int) -> dict:
        calls["n"] = 0
        out = tmp_path / f"crash{workers}"
        with monkeypatch.context() as m:
            m.setattr(loop.StageRunner, "_evaluate_and_checkpoint", crash_after_second_checkpoint)
            with pytest.raises(_Crash):
                run_experiment(_config(image_folder, out, workers, "memory", steps=9), log=lambda *_: None)
        (pt,) = out.rglob("checkpoints/last.pt")
        return out, load_state(pt)

    out0, s0 = last_state(0)
    out2, s2 = last_state(2)
    assert s0["loop"]["global_step"] == s2["loop"]["global_step"]
    assert s0["sampler"] == s2["sampler"]
    assert torch.equal(s0["gen"], s2["gen"])
    # resuming the workers=2 crash gives what an uninterrupted run gives
    run_experiment(_config(image_folder, out2, 2, "memory", steps=9), log=lambda *_: None)
    run_experiment(_config(image_folder, tmp_path / "clean", 0, "memory", steps=9), log=lambda *_: None)
    assert _records(out2) == _records(tmp_path / "clean")


def test_cached_frozen_prefix_gives_the_same_records(image_folder, tmp_path):
    """Fine-tuning with the first stages frozen: their activations computed once give the records of running them."""
    from dataclasses import replace

    def cfg(out, cache):
        c = _config(image_folder, out, 0, "memory")
        train = replace(c.train, schedule=replace(c.train.schedule, freeze_stages=3), cache_prefix=cache)
        return replace(c, train=train, algorithms=("erm_ft", "adip", "kd", "lp_ft"))

    run_experiment(cfg(tmp_path / "full", False), log=lambda *_: None)
    run_experiment(cfg(tmp_path / "cached", True), log=lambda *_: None)
    ref, got = _records(tmp_path / "full"), _records(tmp_path / "cached")
    assert len(ref) == len(got) > 8
    assert ref == got


def test_student_prefix_and_rest_compose_to_the_forward_pass():
    from vl2v.students import create_student, list_students

    for info in list_students():
        torch.manual_seed(0)
        s = create_student(info.name, pretrained=False).eval()
        if not s.splittable:
            continue
        x = torch.rand(3, 3, 64, 64).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            full = s(x)
            for n in range(len(s.stages()) + 1):
                assert torch.equal(s.forward_from(s.forward_prefix(x, n), n), full), (info.name, n)
                # computed in other batch groupings (as the cache does): equal up to float rounding
                h = torch.cat([s.forward_prefix(x[:1], n), s.forward_prefix(x[1:], n)])
                torch.testing.assert_close(s.forward_from(h, n), full, rtol=1e-4, atol=1e-4)
