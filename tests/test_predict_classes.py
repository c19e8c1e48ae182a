"""``vl2v predict RUN --classes ...``: new class names embedded with the run's teacher text tower (text heads)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TinyTeacher, build_image_folder
from vl2v.cli import main
from vl2v.config import ExperimentConfig, Schedule, TrainConfig
from vl2v.experiment.run import run_experiment
from vl2v.serving.predict import (
    ClassList,
    ClassNamesError,
    NoTextHeadError,
    has_text_head,
    load_image,
    load_predictor,
    load_text_predictor,
    parse_class_list,
)

NAMES = ["kite", "harp", "owl"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Finished adip, sd (white box), erm_lp, rise and zeroshot runs (target art) with the tiny test teacher."""
    root = tmp_path_factory.mktemp("classes")
    folder = build_image_folder(root / "tiny", per_class=4, size=40)
    train = TrainConfig(schedule=Schedule(steps=2, frozen_steps=2, lr=1e-3, frozen_lr=1e-2), batch_size=4,
                        eval_every=2, image_size=32)
    cfg = ExperimentConfig(dataset=None, data_dir=str(folder), out_dir=str(root / "runs"),
                           algorithms=("adip", "sd", "erm_lp", "rise", "zeroshot"), targets=(0,), teacher="tiny-test",
                           store="memory", student="efficientnet_lite0", student_pretrained=False, train=train,
                           blackbox=False)
    run_experiment(cfg, log=lambda s: None)
    return root / "runs"


def run(runs: Path, algo: str) -> Path:
    return runs / algo / "target-0-art" / "seed0"


@pytest.fixture
def image(runs) -> Path:
    return runs.parent / "tiny" / "photo" / "cat" / "000.png"


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "store.sqlite"
    monkeypatch.setenv("VL2V_TEACHER_STORE", str(path))
    return path


def text_classifier(names, templates=("a photo of a {c}",)) -> torch.Tensor:
    """T_c as training computes it, straight from the tiny teacher (float16 like the teacher store)."""
    t = TinyTeacher()
    emb = t.embed_texts([tp.format(c=n) for n in names for tp in templates]).half().float()
    return F.normalize(F.normalize(emb, dim=-1).view(len(names), len(templates), -1).mean(1), dim=-1)


# --------------------------------------------------------------------------- the class list
def test_class_list_from_text_and_files(tmp_path):
    assert parse_class_list(" kite, harp ,owl ") == ClassList(NAMES, NAMES)
    assert parse_class_list("hot_air_balloon,owl").names == ["hot air balloon", "owl"]  # as folder names are
    lines = tmp_path / "names.txt"
    lines.write_text("kite\n\nharp\nowl\n")
    assert parse_class_list(classes_file=lines) == ClassList(NAMES, NAMES)
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"n01": "kite", "n02": "harp"}))
    assert parse_class_list(classes_file=mapping) == ClassList(["n01", "n02"], ["kite", "harp"])


@pytest.mark.parametrize("classes,message", [
    ("", "is empty"),
    (" , ", "is empty"),
    ("kite,,owl", "has an empty name (name 2 of 3)"),
    ("owl,kite,owl", "gives the class 'owl' twice, names 1 and 3 of 3"),
    ("owl,kite,Owl", "gives the class 'owl' twice (as 'owl' and 'Owl')"),
    ("hot_air,hot air", "gives the prompt name 'hot air' twice"),
    ("kite", "a classifier needs at least two"),
])
def test_bad_class_lists(classes, message):
    with pytest.raises(ClassNamesError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        parse_class_list(classes)
    assert "\n" not in str(err.value)


def test_bad_class_files(tmp_path):
    with pytest.raises(ClassNamesError, match="not both"):
        parse_class_list("a,b", tmp_path / "x.txt")
    with pytest.raises(ClassNamesError, match="no class names given"):
        parse_class_list()
    with pytest.raises(ClassNamesError, match="cannot read"):
        parse_class_list(classes_file=tmp_path / "absent.txt")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": 1}')
    with pytest.raises(ClassNamesError, match="JSON object of class"):
        parse_class_list(classes_file=bad)
    bad.write_text('{"a": ')
    with pytest.raises(ClassNamesError, match="not valid JSON"):
        parse_class_list(classes_file=bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ClassNamesError, match="is empty"):
        parse_class_list(classes_file=empty)


# --------------------------------------------------------------------------- text heads
@pytest.mark.parametrize("algo", ["adip", "sd"])
def test_new_names_replace_the_text_classifier(runs, image, algo, store):
    p = load_text_predictor(run(runs, algo), parse_class_list(",".join(NAMES)))
    assert p.classes == NAMES and p.meta["embedded_classes"] == NAMES
    x = load_image(image, p.image_size)[None].numpy()
    # the student's embedding, compared with the teacher's embeddings of the new names: 100 cos
    from vl2v.serving.export import load_student_run

    algo_ = load_student_run(run(runs, algo)).algorithm
    with torch.no_grad():
        feats = algo_.student(torch.from_numpy(x))
        z = algo_.embed(feats) if algo == "adip" else feats
        ref = 100 * F.normalize(z, dim=-1) @ text_classifier(NAMES).T
    assert np.abs(p.logits(x) - ref.numpy()).max() < 1e-3
    # the answers were stored: a second predictor asks the teacher nothing
    from vl2v.teachers.store import TeacherStore

    assert TeacherStore(TinyTeacher(), store).counts()["texts"] == 3
    q = load_text_predictor(run(runs, algo), parse_class_list(",".join(NAMES)), store=store)
    assert q.logits(x).tolist() == p.logits(x).tolist()


@pytest.mark.parametrize("algo", ["adip", "sd"])
def test_training_names_give_the_runs_own_predictions(runs, image, algo):
    """The run's class names, embedded again, give the text classifier training used: the same logits."""
    base = load_predictor(run(runs, algo))
    p = load_text_predictor(run(runs, algo), parse_class_list("cat,dog,horse"))
    x = load_image(image, base.image_size)[None].numpy()
    assert np.abs(p.logits(x) - base.logits(x)).max() < 1e-4


def test_zeroshot_is_the_teacher_with_the_new_names(runs, image):
    from vl2v.data.images import load_rgb
    from vl2v.data.transforms import teacher_view

    p = load_text_predictor(run(runs, "zeroshot"), parse_class_list(",".join(NAMES)))
    assert p.kind == "teacher" and p.classes == NAMES and p.image_size == 24
    (pred,) = p.predict_files([image], topk=3)
    arr = torch.from_numpy(np.asarray(load_rgb(image), dtype=np.uint8).copy()).permute(2, 0, 1)
    emb = TinyTeacher().embed_images(teacher_view(arr, None, 24)[None])
    ref = torch.softmax(100 * emb @ text_classifier(NAMES).T, dim=-1)[0]
    assert pred.top[0][0] == NAMES[int(ref.argmax())]
    assert dict(pred.top)[NAMES[0]] == pytest.approx(float(ref[0]), abs=1e-3)


def test_text_head_is_detected_by_behaviour(runs):
    from helpers import rise_sd_context as rise_context
    from vl2v.methods import create_algorithm
    from vl2v.serving.export import load_student_run
    from vl2v.students import create_student

    found = {a: has_text_head(load_student_run(run(runs, a)).algorithm) for a in ("adip", "sd", "erm_lp")}
    assert found == {"adip": True, "sd": True, "erm_lp": False}
    rise = create_algorithm("rise", rise_context(), create_student("efficientnet_lite0", pretrained=False))
    assert not has_text_head(rise)  # it holds T_c, but predicts with a linear classifier (initialised from T_c)
    assert rise.text.shape == (3, 16)  # left as it was


@pytest.mark.parametrize("algo", ["erm_lp", "rise"])
def test_runs_without_a_text_head_refuse(runs, algo):
    with pytest.raises(NoTextHeadError, match=f"is '{algo}': it predicts with a classifier over its 3 training "
                                              "classes \\(cat, dog, horse\\).*runs of adip, sd, zeroshot can") as err:
        load_text_predictor(run(runs, algo), parse_class_list("kite,owl"))
    assert "\n" not in str(err.value)


def test_exported_models_refuse_and_name_their_run(runs, tmp_path):
    model = tmp_path / "student.onnx"
    model.write_bytes(b"not really onnx")
    (tmp_path / "student.onnx.json").write_text(json.dumps({"classes": ["a"], "input": {"shape": [1, 3, 8, 8]},
                                                            "source_run": {"run_dir": "/runs/adip/x/seed0"}}))
    with pytest.raises(NoTextHeadError, match=r"exported model.*\(/runs/adip/x/seed0\)"):
        load_text_predictor(model, parse_class_list("kite,owl"))


def test_another_teacher_than_the_runs_is_refused(runs, tmp_path):
    copy = tmp_path / "adip"
    shutil.copytree(run(runs, "adip"), copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["args"]["teacher_identity"] = "tiny-test(dim=16,size=24,older)"
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ClassNamesError, match=r"trained with teacher tiny-test\(dim=16,size=24,older\), but "
                                              r"'tiny-test' here is tiny-test\(dim=16,size=24\)"):
        load_text_predictor(copy, parse_class_list("kite,owl"))


# --------------------------------------------------------------------------- the command line
def test_cli_predict_with_classes(runs, image, tmp_path, capsys):
    assert main(["predict", str(run(runs, "adip")), str(image), "--classes", "kite,harp,owl", "--topk", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("000.png") and len(out) == 3 and out[1].split()[1] in NAMES
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"n01": "kite", "n02": "harp"}))
    assert main(["predict", str(run(runs, "sd")), str(image), "--classes-file", str(names), "--json",
                 "--store", "memory"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["classes"] == ["n01", "n02"] and d["teacher_identity"] == "tiny-test(dim=16,size=24)"
    assert [t["class"] for t in d["predictions"][0]["top"]] in (["n01", "n02"], ["n02", "n01"])


@pytest.mark.parametrize("argv,message", [
    (["--classes", ""], "--classes is empty"),
    (["--classes", "owl,owl"], "gives the class 'owl' twice"),
    (["--classes", "a,b", "--classes-file", "x"], "not both"),
    (["--store", "memory"], "--store is used only with --classes"),
])
def test_cli_bad_class_lists_give_one_line(runs, image, capsys, argv, message):
    rc = main(["predict", str(run(runs, "adip")), str(image), *argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err


def test_cli_run_without_text_head_gives_one_line(runs, image, capsys):
    rc = main(["predict", str(run(runs, "erm_lp")), str(image), "--classes", "kite,owl"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "runs of adip, sd, zeroshot can" in err


def test_cli_remote_teacher_without_budget_left_gives_one_line(tmp_path, image, capsys, monkeypatch):
    """New class names cost a remote teacher one text query per prompt: a key whose text quota is spent stops
    `vl2v predict --classes` with one line (exit 3), not a traceback, and nothing is predicted."""
    pytest.importorskip("fastapi")
    from vl2v.serving.keys import add_key, parse_limits, set_limits
    from vl2v.serving.live import LiveServer
    from vl2v.serving.service import ServiceConfig, create_app

    data = tmp_path / "serve"
    token = add_key(data / "keys.txt", "alice", parse_limits(["texts=3/prepaid"]))
    folder = build_image_folder(tmp_path / "tiny", per_class=2, size=32)
    with LiveServer(create_app(TinyTeacher(), ServiceConfig(data), name="tiny-test"), log_level="critical") as srv:
        train = TrainConfig(schedule=Schedule(steps=1, frozen_steps=1), batch_size=2, eval_every=1, image_size=32)
        cfg = ExperimentConfig(dataset=None, data_dir=str(folder), out_dir=str(tmp_path / "runs"),
                               algorithms=("zeroshot",), targets=(0,), teacher=f"remote:{srv.url}",
                               teacher_options={"api_key": token}, store="memory", train=train)
        run_experiment(cfg, log=lambda s: None)  # 3 class prompts: the whole text quota
        capsys.readouterr()
        set_limits(data / "keys.txt", "alice", ["texts=+0"])
        zs = tmp_path / "runs" / "zeroshot" / "target-0-art" / "seed0"
        monkeypatch.setenv("VL2V_API_KEY", token)  # records hold no key: the client reads it from its variable
        rc = main(["predict", str(zs), str(image), "--classes", "kite,owl"])
        err = capsys.readouterr()
    assert rc == 3 and err.err.count("\n") == 1 and "budget" in err.err and err.out == ""
