"""A run folder knows what it holds: a command whose settings would change a run's numbers is refused in a folder
of runs made with other settings (issue: old numbers printed under a new header); the same settings reuse them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vl2v.cli import main
from vl2v.config import ExperimentConfig
from vl2v.runs.fingerprint import NOT_NUMBERS, config_diff, describe, flatten, run_diff


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value * 2 + 0.125
    if isinstance(value, str):
        return value + "-other"
    if isinstance(value, (list, tuple)):
        return [*value, "other"]
    if isinstance(value, dict):
        return {**value, "k": "5"}
    return "other"  # None


BASE = json.loads(json.dumps(dataclasses.asdict(ExperimentConfig(train=dataclasses.replace(
    ExperimentConfig().train, class_names=("a", "b")))), default=str))
KEYS = sorted(flatten(BASE))


def _set(d: dict, dotted: str, value) -> dict:
    d = json.loads(json.dumps(d))
    *path, leaf = dotted.split(".")
    node = d
    for p in path:
        node = node[p]
    node[leaf] = value
    return d


@pytest.mark.parametrize("key", KEYS)
def test_every_setting_is_either_a_number_setting_or_listed_as_not_one(key):
    """Each ExperimentConfig field, one at a time: changing it is reported, unless it is in NOT_NUMBERS (which
    runs, where, how fast). A new field is compared by default: refusing a reusable folder is the safe error."""
    old_value = flatten(BASE)[key]
    new = _set(BASE, key, _changed(old_value))
    diffs = config_diff(BASE, new)
    if key in NOT_NUMBERS:
        assert diffs == []
    else:
        assert [k for k, _, _ in diffs] == [key]
        assert key.rsplit(".", 1)[-1] in describe(diffs)


def test_not_numbers_names_real_settings():
    assert NOT_NUMBERS <= set(KEYS)


def test_unresolved_prompt_names_and_a_moved_data_folder_are_not_differences():
    new = _set(BASE, "train.class_names", None)  # a new command resolves them after loading the data
    assert config_diff(BASE, new) == []
    a, b = _set(BASE, "data_dir", "/old/place/PACS"), _set(BASE, "data_dir", "/new/place/PACS")
    assert config_diff(a, b) == []
    assert config_diff(a, _set(BASE, "data_dir", "/old/place/VLCS"))


def test_teacher_options_compare_as_text():
    a, b = _set(BASE, "teacher_options", {"k": "5"}), _set(BASE, "teacher_options", {"k": 5})
    assert config_diff(a, b) == []
    assert config_diff(a, _set(BASE, "teacher_options", {"k": 10}))


def test_run_diff_on_resolved_values():
    train = {"image_size": 128, "device": "cpu", "class_names": ["cat"], "eval_batch_size": 128}
    args = {"teacher_identity": "conse(k=10)", "threads": 1, "student": "efficientnet_lite0", "data_dir": "/x"}
    rec = {"train": train, "args": args}
    assert run_diff(rec, train, {**args, "data_dir": "/y", "output_dir": "z"}) == []
    assert run_diff(rec, {**train, "eval_batch_size": 64}, args) == []
    assert [k for k, *_ in run_diff(rec, train, {**args, "threads": 2})] == ["args.threads"]
    assert [k for k, *_ in run_diff(rec, train, {**args, "teacher_identity": "conse(k=5)"})] == ["args.teacher_identity"]
    assert [k for k, *_ in run_diff(rec, {**train, "class_names": ["kitty"]}, args)] == ["train.class_names"]
    old = {"train": train, "args": {"teacher_identity": "conse(k=10)"}}  # an older vl2v recorded fewer args
    assert run_diff(old, train, args) == []


# --------------------------------------------------------------------------- through the command line
TINY = ["--teacher", "tiny-test", "--store", "memory", "--no-pretrained", "--steps", "2", "--frozen-steps", "2",
        "--batch-size", "4", "--image-size", "32", "--eval-every", "2", "--target", "photo", "--threads", "1"]


@pytest.fixture
def trained(image_folder, tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--data", str(image_folder), "--algorithm", "erm_lp", "zeroshot", "--out", str(out)] + TINY) == 0
    capsys.readouterr()
    return image_folder, out


def _train(folder, out, *extra):
    return main(["train", "--data", str(folder), "--algorithm", "erm_lp", "zeroshot", "--out", str(out)] + TINY
                + list(extra))


@pytest.mark.parametrize("extra,names", [
    (["--frozen-steps", "5", "--image-size", "64"], ["frozen_steps (--frozen-steps) 2 -> 5", "image_size"]),
    (["--teacher-opt", "dim=8"], ["teacher_options (--teacher-opt)"]),
    (["--lr", "0.01"], ["lr (--lr)"]),
    (["--views", "2"], ["views (--views)"]),
    (["--template", "a drawing of a {c}"], ["templates"]),
    (["--max-side", "64"], ["max_side"]),
])
def test_other_settings_in_a_used_folder_are_refused(trained, capsys, extra, names):
    folder, out = trained
    before = (out / "experiment.json").read_bytes()
    assert _train(folder, out, *extra) == 2
    err = capsys.readouterr().err
    assert "holds runs made with other settings" in err and "--overwrite" in err and "new --out" in err
    for n in names:
        assert n in err, err
    assert (out / "experiment.json").read_bytes() == before  # the record of what the folder holds is kept


def test_a_resolved_value_differing_per_run_is_refused(trained, capsys):
    folder, out = trained
    i = TINY.index("--threads")
    argv = ["train", "--data", str(folder), "--algorithm", "erm_lp", "--out", str(out)] + TINY[:i] + ["--threads", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "was made with other settings (threads (--threads) 1 -> 2)" in err, err


def test_same_settings_reuse_the_finished_runs(trained, capsys, monkeypatch):
    folder, out = trained
    from vl2v.training.evaluator import Evaluator

    monkeypatch.setattr(Evaluator, "evaluate", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert _train(folder, out, "--jobs", "1", "--workers", "0") == 0  # speed flags change no number


def test_overwrite_starts_over(trained, capsys):
    folder, out = trained
    (out / "notes.txt").write_text("mine")
    assert _train(folder, out, "--frozen-steps", "4", "--overwrite") == 0
    text = capsys.readouterr().out
    assert "removed 2 earlier runs" in text
    cfg = json.loads((out / "erm_lp" / "target-1-photo" / "seed0" / "config.json").read_text())
    assert cfg["train"]["schedule"]["frozen_steps"] == 4
    assert (out / "notes.txt").read_text() == "mine"  # only runs and vl2v's own summary files are removed
    assert _train(folder, out, "--frozen-steps", "4") == 0  # and now the folder holds the new settings


def test_resume_takes_only_speed_flags(trained, capsys):
    folder, out = trained
    assert main(["train", "--resume", str(out), "--image-size", "64"]) == 2
    assert "--image-size would change its runs" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--jobs", "1"]) == 0



KEYS_SEEN: list = []


def _keyed_teacher(spec=None, api_key=None, **opts):
    from conftest import TinyTeacher

    KEYS_SEEN.append(api_key)
    return TinyTeacher(**{k: int(v) for k, v in opts.items()})


def test_an_api_key_never_reaches_a_record(image_folder, tmp_path, capsys, request):
    """`--teacher-opt api_key=...` is used, but experiment.json, config.json and results.jsonl hold it redacted; a
    resume gives the backend no key (it reads its environment variable), and the same command reuses the runs."""
    from vl2v.teachers.registry import TEACHERS, register_teacher

    register_teacher("tiny-keyed", white_box=False, summary="test-only teacher taking an API key")(_keyed_teacher)
    request.addfinalizer(lambda: TEACHERS.unregister("tiny-keyed"))
    out = tmp_path / "runs"
    argv = ["train", "--data", str(image_folder), "--algorithm", "zeroshot", "--out", str(out),
            "--teacher-opt", "api_key=sk-secret-123"] + TINY[2:] + ["--teacher", "tiny-keyed"]
    assert main(argv) == 0
    assert KEYS_SEEN[-1] == "sk-secret-123"
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".md", ".html"):
            assert "sk-secret-123" not in f.read_text(errors="ignore"), f
    assert json.loads((out / "experiment.json").read_text())["config"]["teacher_options"] == {"api_key": "<redacted>"}
    assert main(argv) == 0  # the same settings: reused, not refused
    assert main(["train", "--resume", str(out)]) == 0
    assert KEYS_SEEN[-1] is None  # the redacted key is not passed on
    capsys.readouterr()


def test_a_sweep_refuses_to_write_an_api_key_into_job_files():
    from vl2v.errors import ConfigError
    from vl2v.experiment.sweep import _config_json

    with pytest.raises(ConfigError, match="api_key=... would be written into every job's job.json"):
        _config_json(ExperimentConfig(teacher="remote:http://127.0.0.1:1", teacher_options={"api_key": "k"}))
    assert _config_json(ExperimentConfig(teacher_options={"k": "5"}))["teacher_options"] == {"k": "5"}


def test_the_experiment_records_the_library_versions_its_numbers_depend_on(trained):
    import torch

    env = json.loads((trained[1] / "experiment.json").read_text())["environment"]
    assert env["packages"]["torch"] == torch.__version__.split("+")[0]
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert {"timm", "numpy", "pillow", "onnxruntime"} <= set(env["packages"])
