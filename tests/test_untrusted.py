"""Untrusted files and bad configurations: refused before any work, nothing executed."""

import json
import pickle
from pathlib import Path

import pytest
import torch

from vl2v.cli import main
from vl2v.training.checkpoint import UnsafeCheckpointError, load_state

MARK = Path("/tmp/vl2v-pwned-marker")


class Evil:
    def __reduce__(self):
        return (MARK.write_text, ("pwned",))


def evil_file(path: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump({"algorithm": Evil()}, fh)
    return path


def test_crafted_pickle_checkpoint_is_refused_and_not_executed(tmp_path):
    MARK.unlink(missing_ok=True)
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_state(evil_file(tmp_path / "last.pt"))
    assert not MARK.exists()


def test_crafted_pickle_as_student_weights_is_refused(tmp_path, capsys):
    from conftest import build_image_folder

    MARK.unlink(missing_ok=True)
    data = build_image_folder(tmp_path / "d")
    rc = main(["train", "--data", str(data), "--algorithm", "erm_lp", "--teacher", "tiny-test", "--store", "memory",
               "--student", "resnet50", "--student-weights", str(evil_file(tmp_path / "w.pt")), "--out", str(tmp_path / "o")])
    assert rc == 2 and "weights_only" in capsys.readouterr().err
    assert not MARK.exists()


def _short_run(data, out, extra=()):
    return ["train", "--data", str(data), "--algorithm", "adip", "--target", "0", "--teacher", "tiny-test",
            "--store", "memory", "--no-pretrained", "--steps", "4", "--frozen-steps", "4", "--batch-size", "2",
            "--image-size", "32", "--eval-every", "2", "--out", str(out), *extra]


def _interrupted_copy(tmp_path, image_folder, monkeypatch):
    """A run interrupted after its first checkpoint (the process 'dies' right after writing last.pt)."""
    from vl2v.training import stages as loop  # the stage runner saves the resume state

    real = loop.save_state

    class Died(Exception):
        pass

    def die(path, state):
        real(path, state)
        raise Died()

    monkeypatch.setattr(loop, "save_state", die)
    out = tmp_path / "run"
    with pytest.raises(Died):
        main(_short_run(image_folder, out))
    monkeypatch.setattr(loop, "save_state", real)
    return out


def test_crafted_pickle_in_a_resumed_run_is_refused(tmp_path, image_folder, monkeypatch, capsys):
    out = _interrupted_copy(tmp_path, image_folder, monkeypatch)
    MARK.unlink(missing_ok=True)
    evil_file(next(out.rglob("last.pt")))
    assert main(["train", "--resume", str(out)]) != 0
    assert "refusing to load" in capsys.readouterr().err
    assert not MARK.exists()


def test_resume_with_a_different_teacher_is_refused(tmp_path, image_folder, monkeypatch, capsys):
    out = _interrupted_copy(tmp_path, image_folder, monkeypatch)
    exp = json.loads((out / "experiment.json").read_text())
    exp["config"]["teacher_options"] = {"dim": "8"}  # another teacher: 8-d embeddings instead of 16
    (out / "experiment.json").write_text(json.dumps(exp))
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    # refused before any work by the run-folder guard (vl2v.runs.fingerprint), naming both teachers
    assert "was made with other settings" in err and "teacher_identity" in err
    assert "tiny-test(dim=16" in err and "dim=8" in err


def test_checkpoint_of_another_size_is_named(tmp_path, image_folder, monkeypatch):
    from vl2v.errors import ConfigError
    from vl2v.methods import TaskContext, create_algorithm
    from vl2v.students import create_student
    from vl2v.training.loop import check_compatible

    def algo(dim):
        ctx = TaskContext(num_classes=3, class_names=list("abc"), source_domains=["x"],
                          text_classifier=torch.nn.functional.normalize(torch.randn(3, dim), dim=-1), teacher_dim=dim)
        return create_algorithm("adip", ctx, create_student("efficientnet_lite0", pretrained=False))

    with pytest.raises(ConfigError, match=r"projection.weight is \(16, 1280\) in the checkpoint but \(8, 1280\) now.*embedding size"):
        check_compatible(algo(16).state_dict(), algo(8), Path("last.pt"))
