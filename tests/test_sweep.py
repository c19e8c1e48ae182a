"""Sweeps: stable job ids, interrupted sweeps resume and skip finished jobs, submitit path, report over a sweep."""

import os
import signal
import subprocess
import sys
import time

import pytest

from vl2v.cli import CLIError, main
from vl2v.cli.sweep import job_configurator
from vl2v.errors import ConfigError
from vl2v.experiment.sweep import expand, parse_grid

TRAIN = ["--no-pretrained", "--steps", "3", "--frozen-steps", "3", "--batch-size", "4", "--image-size", "32",
         "--eval-every", "2"]


def test_expansion_and_stable_ids(image_folder):
    grid = parse_grid(["adip.lam=0,0.5"])
    jobs = expand([str(image_folder)], ["adip", "erm_ft"], [0, 1], ["photo"], grid, job_configurator(TRAIN))
    assert len(jobs) == (2 + 1) * 2
    assert {j.meta["algorithm"] for j in jobs} == {"adip:lam=0", "adip:lam=0.5", "erm_ft"}
    again = expand([str(image_folder)], ["adip", "erm_ft"], [0, 1], ["photo"], grid, job_configurator(TRAIN))
    assert [j.id for j in jobs] == [j.id for j in again]  # same arguments -> same ids
    other = expand([str(image_folder)], ["erm_ft"], [0], ["photo"], None, job_configurator(TRAIN + ["--lr", "1e-3"]))
    assert other[0].id not in {j.id for j in jobs}
    with pytest.raises(ConfigError, match="unknown target domain .mars.; domains are: 0=art"):
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


@pytest.mark.parametrize("extra,msg", [
    (["--tar", "1"], "unknown `vl2v train` option"),  # an abbreviation of --target: refused, not silently expanded
    (["--see", "5"], "unknown `vl2v train` option"),  # an abbreviation of --seed
    (["--target", "1"], "--target is set by the sweep itself"),
    (["--seed", "5"], "--seed is set by the sweep itself"),
    (["--algorithm", "kd"], "--algorithm is set by the sweep itself"),
    (["--steps", "many"], "bad `vl2v train` option"),
])
def test_sweep_refuses_train_options_it_owns_or_cannot_parse(image_folder, tmp_path, capsys, extra, msg):
    with pytest.raises(CLIError, match=msg):
        job_configurator(TRAIN + extra)
    rc = main(["sweep", "--out", str(tmp_path / "s"), "--datasets", str(image_folder), "--algorithms", "erm_lp",
               "--targets", "art", "--dry-run", "--", *TRAIN, *extra])
    assert rc == 2 and msg in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_sweep_jobs_record_the_sweep_values_they_run_with(image_folder, tmp_path):
    """Each job's config (job.json) holds its own target, algorithm and seed, and the run folder agrees."""
    import json

    jobs = expand([str(image_folder)], ["erm_lp"], [3], ["sketch"], None, job_configurator(TRAIN))
    (job,) = jobs
    assert job.config.targets == (2,) and job.config.seeds == (3,) and job.config.algorithms == ("erm_lp",)
    assert job.config.train.schedule.steps == 3 and job.config.train.batch_size == 4
    assert main(["sweep", "--out", str(tmp_path / "s"), "--datasets", str(image_folder), "--algorithms", "erm_lp",
                 "--targets", "sketch", "--seeds", "3", "--workers", "1", "--", *TRAIN]) == 0
    d = tmp_path / "s" / "jobs" / job.id
    cfg = json.loads((d / "job.json").read_text())["config"]
    assert (cfg["targets"], cfg["seeds"], cfg["algorithms"]) == ([2], [3], ["erm_lp"])
    assert (d / "erm_lp" / "target-2-sketch" / "seed3" / "done").exists()
