"""Disk problems: a read-only or full output folder gives a clear error and keeps the last good checkpoint."""

import errno

from vl2v.cli import main
from vl2v.training.checkpoint import load_state


def argv(data, out):
    return ["train", "--data", str(data), "--algorithm", "erm_ft", "--target", "0", "--teacher", "tiny-test",
            "--store", "memory", "--no-pretrained", "--steps", "8", "--batch-size", "2", "--image-size", "32",
            "--eval-every", "2", "--out", str(out)]


def test_read_only_output_folder_fails_before_work(image_folder, tmp_path, monkeypatch, capsys):

    from vl2v.experiment import run as experiment_run

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(experiment_run.tempfile, "NamedTemporaryFile", read_only)
    assert main(argv(image_folder, tmp_path / "ro")) == 2
    err = capsys.readouterr().err
    assert "cannot write to the output folder" in err and "Read-only file system" in err
    assert not list((tmp_path / "ro").rglob("results.jsonl"))


def test_disk_full_mid_run_keeps_last_good_checkpoint(image_folder, tmp_path, monkeypatch, capsys):
    from vl2v.training import checkpoint

    real_save = checkpoint.torch.save
    calls = {"n": 0}

    def filling_disk(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] >= 3:  # the third checkpoint write finds the disk full, half-way through
            with open(f, "wb") as fh:
                fh.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(checkpoint.torch, "save", filling_disk)
    out = tmp_path / "full"
    assert main(argv(image_folder, out)) == 4
    err = capsys.readouterr().err
    assert "No space left on device" in err and "last good" in err and "--resume" in err
    last = next(out.rglob("last.pt"))
    state = load_state(last)  # still the complete second checkpoint
    assert state["loop"]["global_step"] == 3  # evaluations at steps 0 and 2: the checkpoint after step 2
    assert not list(last.parent.glob(".*.tmp"))  # the half-written temporary file was removed
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert main(["train", "--resume", str(out)]) == 0  # space is back: the run continues
