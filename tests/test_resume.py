"""Crash-safe runs: SIGKILL at random moments, `vl2v train --resume`, identical final metrics."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

RUNNER = r"""
import sys
sys.path.insert(0, {tests!r})
import conftest  # registers the tiny-test teacher
from vl2v.cli import main
sys.exit(main({argv!r}))
"""


def train_argv(data, out):
    return ["train", "--data", str(data), "--algorithm", "adip", "erm_ft", "--target", "0", "--teacher", "tiny-test",
            "--store", str(out) + ".store.sqlite", "--no-pretrained", "--steps", "12", "--frozen-steps", "9",
            "--batch-size", "4", "--image-size", "32", "--eval-every", "3", "--swad", "--out", str(out)]


def run_cli(argv, env=None):
    code = RUNNER.format(tests=str(TESTS), argv=argv)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "VL2V_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env or {})})


def metrics(out):
    res = {}
    for f in sorted(Path(out).rglob("final.json")):
        d = json.loads(f.read_text())
        # data_stream: the digest of every (image, view) each stage trained on survives a kill and resume
        res[d["algorithm"]] = {"selected": d["selected"], "swad": {k: v for k, v in d.get("swad", {}).items()},
                               "data_stream": d["data_stream"]}
    recs = {}
    for f in sorted(Path(out).rglob("results.jsonl")):
        rows = [json.loads(l) for l in f.read_text().splitlines()]
        recs[f.parent.parent.parent.name] = [
            {k: v for k, v in r.items() if k.startswith("env") or k in ("step", "loss", "val_acc", "stage")} for r in rows]
    return res, recs


@pytest.mark.timeout(900)
def test_sigkill_and_resume_gives_identical_results(image_folder, tmp_path):
    ref = tmp_path / "ref"
    p = run_cli(train_argv(image_folder, ref))
    assert p.wait() == 0, p.stderr.read().decode()[-2000:]

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills = 0

    def progress():  # evaluations recorded so far (each is followed by a checkpoint write)
        return sum(len(f.read_text().splitlines()) for f in out.rglob("results.jsonl")) if out.exists() else 0

    p = run_cli(train_argv(image_folder, out))
    while True:
        # kill at a random moment after the attempt has made progress (so every attempt moves the run on),
        # which lands before, during or after checkpoint writes
        start = progress()
        while p.poll() is None and progress() <= start:
            time.sleep(0.05)
        if p.poll() is not None or kills >= 4:
            rc = p.wait()
            break
        time.sleep(rng.uniform(0.0, 1.0))
        if p.poll() is not None:
            rc = p.wait()
            break
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        p = run_cli(["train", "--resume", str(out)])
    assert rc == 0, p.stderr.read().decode()[-2000:]
    assert kills >= 2, "the run finished before it could be killed twice; make it longer"
    assert metrics(out) == metrics(ref)
    # no checkpoint or temp file is left behind in finished runs
    assert not list(out.rglob("last.pt")) and not list(out.rglob("*.tmp"))


def test_resume_refuses_a_non_output_folder(tmp_path, capsys):
    from vl2v.cli import main

    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "not a vl2v output folder" in capsys.readouterr().err


def test_atomic_write_keeps_previous_file_on_failure(tmp_path):
    from vl2v.utils.io import atomic_path, atomic_write_bytes

    target = tmp_path / "last.pt"
    atomic_write_bytes(target, b"good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half writ")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
