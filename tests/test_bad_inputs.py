"""Every bad input of `vl2v train`/`compare` gets one line naming the flag and the fix, before any data or model
is loaded, and never a traceback (issue: tracebacks and late errors where the README promises a clear error)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vl2v.cli import main

# (extra argv, what the one line must say); each is run with a tiny --data folder unless it names its own
BAD = [
    (["--device", "cuda"], "--device cuda: no CUDA device"),
    (["--device", "cuda:3"], "--device cuda:3: no CUDA device"),
    (["--device", "gpu"], "--device 'gpu' is not a device"),
    (["--trials", "0"], "--trials: expected a whole number >= 1"),
    (["--trials", "-2"], "--trials: expected a whole number >= 1"),
    (["--teacher-opt", "k=abc"], "k='abc': expected int"),
    (["--teacher-opt", "kk=3"], "has no option 'kk'; known: k,"),
    (["--teacher-opt", "k=0"], "k must be >= 1"),
    (["--teacher-opt", "runtime=gpu"], "runtime"),
    (["--teacher-opt", "k"], "expected key=value"),
    (["--student-weights", "notes.txt"], "--student-weights notes.txt"),
    (["--student-weights", "MISSING.safetensors"], "no such file"),
    (["--lr", "-1"], "--lr must be >= 0"),
    (["--steps", "-5"], "--steps must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--image-size", "8"], "--image-size must be >= 16"),
    (["--target", "7"], "--target 7: target 7 out of range: domains are 0=art, 1=photo, 2=sketch"),
    (["--target", "mars"], "unknown target domain 'mars'; domains are: 0=art"),
    (["--algorithm", "adip:lam=2"], "lam"),
    (["--algorithm", "nope"], "unknown algorithm 'nope'"),
    (["--teacher", "nope"], "unknown teacher"),
    (["--resume", "RESUME", "--lr", "0.1"], "--resume continues"),
    (["--data", "MISSING", "--target", "photo"], "--data MISSING: no such folder"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if anything reaches data loading, teacher or student creation."""
    from vl2v.experiment import run as experiment_run

    def boom(*a, **k):
        raise AssertionError("work started before the bad input was reported")

    monkeypatch.setattr(experiment_run, "prepare", boom)
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_input_is_one_line_before_any_work(image_folder, tmp_path, capsys, no_work, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("my notes")
    extra = [str(tmp_path / "missing") if e == "MISSING" else e for e in extra]
    message = message.replace("MISSING", str(tmp_path / "missing"))
    if "RESUME" in extra:
        from conftest import build_image_folder  # noqa: F401  (the folder exists already: image_folder)

        (tmp_path / "prev").mkdir()
        (tmp_path / "prev" / "experiment.json").write_text("{}")
        extra = [str(tmp_path / "prev") if e == "RESUME" else e for e in extra]
    argv = ["train", "--data", str(image_folder), "--teacher", "conse", "--store", "memory",
            "--out", str(tmp_path / "out")]
    if "--data" in extra:
        argv = argv[:1] + argv[3:]
    if "--teacher" in extra:
        i = argv.index("--teacher")
        argv = argv[:i] + argv[i + 2:]
    try:
        rc = main(argv + extra)
    except SystemExit as exc:  # argparse's own errors: usage line + "error: ..." on stderr, exit 2
        rc = exc.code
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert message in err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(lines) == 1, err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("results.jsonl"))


@pytest.mark.parametrize("cmd", [["teacher", "list"], ["teachers"], ["list"], ["--help"], ["train", "--help"]])
def test_output_cut_short_by_a_pipe_is_not_a_traceback(cmd):
    """`vl2v teacher list | head -1`: the reader leaves early; vl2v ends quietly."""
    code = ("import sys; from vl2v.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.Popen([sys.executable, "-c", code, *cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # like `head -1` that has read its line: every later write meets a closed pipe
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
