"""Sweeps: stable job ids, interrupted sweeps resume and skip finished jobs, submitit path, report over a sweep."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vl2v.cli import main
from vl2v.errors import ConfigError
from vl2v.evaluation.sweep import expand, parse_grid

TRAIN = ["--no-pretrained", "--steps", "3", "--frozen-steps", "3", "--batch-size", "4", "--image-size", "32",
         "--eval-every", "2"]


def test_expansion_and_stable_ids(image_folder):
    grid = parse_grid(["adip.lam=0,0.5"])
    jobs = expand([str(image_folder)], ["adip", "erm_ft"], [0, 1], ["photo"], grid, TRAIN)
    assert len(jobs) == (2 + 1) * 2
    assert {j.meta["algorithm"] for j in jobs} == {"adip:lam=0", "adip:lam=0.5", "erm_ft"}
    again = expand([str(image_folder)], ["adip", "erm_ft"], [0, 1], ["photo"], grid, TRAIN)
    assert [j.id for j in jobs] == [j.id for j in again]  # same arguments -> same ids
    other = expand([str(image_folder)], ["erm_ft"], [0], ["photo"], None, TRAIN + ["--lr", "1e-3"])
    assert other[0].id not in {j.id for j in jobs}
    with pytest.raises(ConfigError, match="not a domain"):
        expand([str(image_folder)], ["erm_ft"], [0], ["mars"])
    with pytest.raises(ConfigError, match="not in the sweep's algorithms"):
        expand([str(image_folder)], ["erm_ft"], [0], None, parse_grid(["kd.alpha=0.1"]))


def test_interrupted_local_sweep_resumes_and_skips_finished_jobs(image_folder, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--out", str(out), "--datasets", str(image_folder), "--algorithms", "erm_lp", "erm_ft",
            "--seeds", "0", "1", "--targets", "art", "--workers", "1", "--", *TRAIN]
    proc = subprocess.Popen([sys.executable, "-m", "vl2v", *argv], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "VL2V_PROGRESS": "0", "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("jobs/*/job.done"))) < 1:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its running job die together
    proc.wait()
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("jobs/*/job.done")}
    assert 1 <= len(done_before) < 4
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert f"{len(done_before)} were already done" in text
    done_after = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("jobs/*/job.done")}
    assert len(done_after) == 4
    assert all(done_after[k] == v for k, v in done_before.items())  # finished jobs were not run again
    assert main(["report", str(out)]) == 0
    rep = capsys.readouterr().out
    assert "4 runs, trial seeds [0, 1]" in rep and "| erm_lp |" in rep and "| erm_ft |" in rep


def test_submitit_launcher_runs_jobs(image_folder, tmp_path, capsys):
    out = tmp_path / "sw"
    rc = main(["sweep", "--out", str(out), "--datasets", str(image_folder), "--algorithms", "erm_lp",
               "--targets", "sketch", "--launcher", "submitit-local", "--", *TRAIN])
    assert rc == 0, capsys.readouterr()
    assert len(list(out.glob("jobs/*/job.done"))) == 1
    assert (out / "submitit").is_dir()
