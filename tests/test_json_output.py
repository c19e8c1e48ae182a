"""``--json`` of `vl2v list`, `vl2v report` and `vl2v data check`: one JSON document on stdout, nothing else;
and the listing commands end quietly when the reader of their pipe has gone (`vl2v teacher list | head -1`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vl2v.cli import main

DOMAINS = ["art", "photo", "sketch"]


def write_run(root: Path, algorithm: str, target: int, seed: int, ood: float, **final) -> Path:
    """A finished run directory written by hand (results.jsonl, config.json, final.json, done)."""
    run = root / algorithm / f"target-{target}-{DOMAINS[target]}" / f"seed{seed}"
    run.mkdir(parents=True)
    args = {"dataset": "Toy", "algorithm": algorithm, "test_envs": [target], "trial_seed": seed, "hparams_seed": 0}
    (run / "results.jsonl").write_text(json.dumps({"args": args, "step": 4, "stage": "ft", "val_acc": ood}) + "\n")
    (run / "config.json").write_text(json.dumps({"args": args, "domains": DOMAINS, "classes": ["a", "b"]}))
    sel = {"ood_acc": ood, "id_acc": ood + 0.1, "val_acc": ood, "stage": "ft", "step": 4}
    (run / "final.json").write_text(json.dumps({"algorithm": algorithm, "target": target, "trial_seed": seed,
                                                "selected": sel, "oracle": sel, "n_train_images": 50, **final}))
    (run / "done").write_text("done")
    return run


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    bill = {"needed": {"image": 50, "text": 2}, "paid": {"image": 20, "text": 2}, "store_hits": {"image": 30, "text": 0}}
    for seed, ood in ((0, 0.5), (1, 0.7)):
        write_run(root, "adip", 0, seed, ood, teacher_bill=bill, queries={"image_queries": 20, "image_hits": 30})
        write_run(root, "erm_lp", 0, seed, ood - 0.2, teacher_bill={k: {"image": 0, "text": 0} for k in bill})
    write_run(root, "kd", 1, 0, 0.4, queries={"image_queries": 10, "image_hits": 40, "text_queries": 2})  # older run
    return root


def _json_stdout(capsys, argv: list[str], rc: int = 0):
    assert main(argv) == rc
    out = capsys.readouterr().out
    return json.loads(out)  # the whole of stdout is one JSON document


def test_list_json(capsys):
    data = _json_stdout(capsys, ["list", "--json"])
    assert set(data) == {"algorithms", "students", "teachers", "datasets", "data_root"}
    algos = {a["name"]: a for a in data["algorithms"]}
    assert algos["adip"]["needs_teacher"] and not algos["erm_lp"]["needs_teacher"]
    assert algos["zeroshot"]["needs_training"] is False
    assert any(t["name"] == "conse" for t in data["teachers"])
    assert all({"name", "domains", "num_classes", "present"} <= set(d) for d in data["datasets"])
    only = _json_stdout(capsys, ["list", "algorithms", "--json"])
    assert list(only) == ["algorithms"]


def test_report_json(runs, capsys):
    data = _json_stdout(capsys, ["report", str(runs), "--json"])
    (ds,) = data["datasets"]
    assert ds["dataset"] == "Toy" and ds["domains"] == DOMAINS and ds["trial_seeds"] == [0, 1] and ds["runs"] == 5
    ood = ds["tables"]["ood"]
    assert ood["unit"] == "%" and [r["algorithm"] for r in ood["rows"]] == ["erm_lp", "kd", "adip"]
    adip = ood["rows"][2]
    assert adip["targets"]["art"] == {"mean": pytest.approx(60.0), "se": pytest.approx(10 / 2 ** 0.5, abs=1e-3), "n": 2}  # DomainBed SE
    assert adip["avg"] is None  # not every domain was a target
    assert ood["rows"][1]["targets"] == {"photo": {"mean": pytest.approx(40.0), "se": None, "n": 1}}
    bills = {b["algorithm"] + (" (old)" if b["needed"] is None else ""): b for b in ds["teacher_bills"]}
    assert bills["adip"]["needed"] == {"image": 100, "text": 4} and bills["adip"]["paid"]["image"] == 40
    assert bills["adip"]["needed_image_per_train_image"] == 1.0
    assert bills["kd (old)"]["paid"] == {"image": 10, "text": 2} and bills["kd (old)"]["store_hits"]["image"] == 40
    assert "needed" in ds["teacher_bill_note"]
    assert not (runs / "report.html").exists()  # --json writes no page unless asked


def test_report_json_to_file_and_markdown_bill(runs, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["report", str(runs), "--json", "--out", str(out)]) == 0
    cap = capsys.readouterr()
    assert cap.out == "" and "wrote" in cap.err
    assert json.loads(out.read_text())["datasets"][0]["dataset"] == "Toy"
    assert main(["report", str(runs), "--no-html"]) == 0
    md = capsys.readouterr().out
    assert "| adip | 2 | 1.00 | 100 | 4 | 40 | 4 | 60 | 0 |" in md
    assert "| kd (store counters, older run) | 1 | - | - | - | 10 | 2 | 40 | 0 |" in md


def test_data_check_json(image_folder, capsys):
    data = _json_stdout(capsys, ["data", "check", "--data", str(image_folder), "--json"])
    assert data["ok"] and data["errors"] == [] and data["images"] == 54
    assert data["domains"] == ["art", "photo", "sketch"] and data["counts"]["art"] == {"cat": 6, "dog": 6, "horse": 6}
    (image_folder / "photo" / "dog" / "000.png").write_bytes(b"not an image")
    data = _json_stdout(capsys, ["data", "check", "--data", str(image_folder), "--json", "--strict"], rc=1)
    assert not data["ok"] and any("000.png" in e for e in data["errors"])
    data = _json_stdout(capsys, ["data", "check", "--data", str(image_folder / "gone"), "--json"], rc=1)
    assert not data["ok"] and data["counts"] == {} and data["hint"]


@pytest.mark.parametrize("argv", [["teacher", "list"], ["list", "--json"]])
def test_closed_pipe_ends_quietly(argv):
    """`vl2v teacher list | head -1`: the reader is gone before we write; no traceback, exit 0."""
    proc = subprocess.Popen([sys.executable, "-m", "vl2v", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # nobody will read: every write gets EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
