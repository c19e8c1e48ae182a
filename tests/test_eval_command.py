"""``vl2v eval``: accuracy, per-class accuracy and confusion matrix of a trained model on a labelled folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import build_image_folder
from helpers import onnx_exports, run_of, trained  # noqa: F401  (shared fixtures: trained runs, ONNX exports)
from vl2v.cli import main
from vl2v.serving.evaluate import EvalError, evaluate, scan_labelled_folder
from vl2v.serving.predict import ClassList, expand_images, load_image, load_predictor, load_text_predictor


@pytest.fixture
def data(tmp_path) -> Path:
    """domain/class/image: 3 domains x 3 classes (cat, dog, horse) x 3 images."""
    return build_image_folder(tmp_path / "eval", per_class=3, size=40)


@pytest.fixture(autouse=True)
def _store(tmp_path, monkeypatch):
    """Teacher answers (class names embedded for text heads) go to a store of the test's own."""
    monkeypatch.setenv("VL2V_TEACHER_STORE", str(tmp_path / "store.sqlite"))


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["eval", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def top1_fraction(model, folder: Path) -> tuple[float, int]:
    """What `vl2v predict` says: the fraction of images whose top-1 class is their class folder's name."""
    files = expand_images([folder])
    preds = load_predictor(model).predict_files(files, topk=1)
    hits = [p.top[0][0] == Path(p.path).parent.name for p in preds]
    return sum(hits) / len(hits), len(hits)


# --------------------------------------------------------------------------- layouts (no model needed)
def test_layouts_are_detected(data, tmp_path):
    f = scan_labelled_folder(data)
    assert f.layout == "domain/class/image" and f.domains == ["art", "photo", "sketch"]
    assert f.classes == ["cat", "dog", "horse"] and len(f.files) == 27
    assert set(f.file_domains) == {"art", "photo", "sketch"}
    g = scan_labelled_folder(data / "photo")
    assert g.layout == "class/image" and g.domains == [] and len(g.files) == 9
    assert g.labels == ["cat"] * 3 + ["dog"] * 3 + ["horse"] * 3
    # images in nested folders under a class folder count for that class; empty folders are noted, left out
    (data / "photo" / "cat" / "more").mkdir()
    shutil.copy(data / "photo" / "cat" / "000.png", data / "photo" / "cat" / "more" / "x.png")
    (data / "photo" / "empty").mkdir()
    g = scan_labelled_folder(data / "photo")
    assert g.labels.count("cat") == 4 and g.classes == ["cat", "dog", "horse"]
    assert g.notes == ["empty/: empty class folder, left out"]


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist"),
    ("file", "is not a folder"),
    ("empty", "has no sub-folders"),
    ("loose", "lies directly in it"),
    ("mixed", "mixes two layouts"),
    ("no_images", "holds no image files"),
    ("empty_folders", "holds no images"),
])
def test_bad_folders_give_one_line(data, tmp_path, case, message):
    bad = tmp_path / "bad"
    if case == "file":
        bad.write_text("x")
    elif case != "missing":
        bad.mkdir()
    img = data / "art" / "cat" / "000.png"
    if case == "loose":
        shutil.copy(img, bad / "a.png")
    elif case == "mixed":
        (bad / "cat").mkdir()
        shutil.copy(img, bad / "cat" / "a.png")
        (bad / "art" / "dog").mkdir(parents=True)
    elif case == "no_images":
        (bad / "art" / "cat").mkdir(parents=True)
        (bad / "art" / "cat" / "notes.txt").write_text("x")
    elif case == "empty_folders":
        (bad / "cat").mkdir()
    with pytest.raises(EvalError, match=message) as err:
        scan_labelled_folder(bad)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- trained runs
@pytest.mark.parametrize("algo", ["adip", "erm_lp", "kd"])
def test_accuracy_is_the_top1_fraction_of_predict(trained, data, algo):
    run = run_of(trained, algo)
    res = evaluate(run, data)
    frac, n = top1_fraction(run, data)
    o = res.overall
    assert o.images == n == 27 and o.accuracy == pytest.approx(frac)
    # rows are true classes: each holds its class's 9 images; the diagonal is what is correct
    assert o.confusion.shape == (3, 3) and o.confusion.sum(axis=1).tolist() == [9, 9, 9]
    assert o.correct == int(np.trace(o.confusion))
    per = o.per_class()
    assert sum(v["images"] for v in per.values()) == 27 and sum(v["correct"] for v in per.values()) == o.correct
    for i, c in enumerate(res.classes):
        assert per[c]["correct"] == o.confusion[i, i] and per[c]["accuracy"] == pytest.approx(o.confusion[i, i] / 9)
    # per domain: the domains' matrices add up to the overall one, each its own top-1 fraction
    assert sorted(res.domains) == ["art", "photo", "sketch"]
    assert (sum(s.confusion for s in res.domains.values()) == o.confusion).all()
    for d, s in res.domains.items():
        assert s.images == 9 and s.accuracy == pytest.approx(top1_fraction(run, data / d)[0])


def test_class_image_layout(trained, data, capsys):
    run = run_of(trained, "erm_lp")
    rc, out, err = cli(capsys, run, "--data", data / "sketch")
    assert rc == 0 and err == ""
    frac, n = top1_fraction(run, data / "sketch")
    assert f"top-1 accuracy: {frac:.4f} ({round(frac * n)} / {n})" in out
    assert "(class/image: 3 classes, 9 images)" in out and "domain  images" not in out
    assert "confusion matrix (rows: true class, columns: predicted class)" in out
    lines = out.splitlines()
    head = lines.index(next(s for s in lines if s.startswith("true \\ predicted")))
    rows = lines[head + 1:head + 4]
    assert [r.split()[0] for r in rows] == ["cat", "dog", "horse"]
    assert sum(int(x) for r in rows for x in r.split()[1:]) == 9


def test_json_output(trained, data, capsys):
    run = run_of(trained, "adip")
    rc, out, _ = cli(capsys, run, "--data", data, "--json")
    assert rc == 0
    d = json.loads(out)
    ref = evaluate(run, data)
    assert d["layout"] == "domain/class/image" and d["kind"] == "pytorch" and d["algorithm"] == "adip"
    assert d["classes"] == ["cat", "dog", "horse"] and d["embedded_classes"] == [] and d["unreadable"] == []
    assert d["overall"]["images"] == 27 and d["overall"]["accuracy"] == pytest.approx(ref.overall.accuracy)
    assert d["overall"]["confusion"]["matrix"] == ref.overall.confusion.tolist()
    assert set(d["domains"]) == {"art", "photo", "sketch"}
    assert sum(v["images"] for v in d["domains"].values()) == 27
    assert sum(c["correct"] for c in d["overall"]["per_class"].values()) == d["overall"]["correct"]


def test_text_output_reports_every_domain(trained, data, capsys):
    rc, out, _ = cli(capsys, run_of(trained, "kd"), "--data", data)
    assert rc == 0
    assert "(domain/class/image: 3 domains, 3 classes, 27 images)" in out
    table = [s.split() for s in out.splitlines() if s.split()[:1] in (["art"], ["photo"], ["sketch"], ["all"])]
    assert [r[0] for r in table] == ["art", "photo", "sketch", "all"]
    assert sum(int(r[1]) for r in table[:3]) == int(table[3][1]) == 27
    assert "all domains" in out


def test_unknown_class_is_one_line_error(trained, data, capsys):
    folder = data / "photo"
    (folder / "horse").rename(folder / "zebra")
    for model in (run_of(trained, "erm_lp"), run_of(trained, "kd") / "model.safetensors"):
        rc, out, err = cli(capsys, model, "--data", folder)
        assert rc == 2 and out == ""
        assert err.count("\n") == 1 and "Traceback" not in err
        assert "the model does not know: zebra" in err and "it knows cat, dog, horse" in err
        assert "rename such folders" in err and "adip, sd and zeroshot" in err


def test_text_head_embeds_unknown_classes(trained, data, tmp_path):
    folder = data / "photo"
    shutil.copytree(folder / "horse", folder / "zebra")
    run = run_of(trained, "adip")
    res = evaluate(run, folder)
    assert res.embedded == ["zebra"] and res.classes == ["cat", "dog", "horse", "zebra"]
    assert res.overall.images == 12 and res.overall.confusion.shape == (4, 4)
    # the run's own classes keep their trained embeddings: their logits are the run's, plus one column
    files = expand_images([folder / "cat"])
    base = load_predictor(run)
    ext = load_text_predictor(run, ClassList.of_folders(["zebra"]), keep_run_classes=True)
    x = np.stack([load_image(f, base.image_size).numpy() for f in files])
    a, b = base.logits(x), ext.logits(x)
    assert b.shape == (3, 4) and np.abs(a - b[:, :3]).max() < 1e-4
    # the name was embedded through the teacher store (cached for the next time)
    assert (tmp_path / "store.sqlite").exists()


def test_zeroshot_run_is_the_teachers_accuracy(trained, data, capsys):
    rc, out, _ = cli(capsys, run_of(trained, "zeroshot"), "--data", data / "art", "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["kind"] == "teacher" and d["algorithm"] == "zeroshot" and d["overall"]["images"] == 9
    assert d["embedded_classes"] == []


def test_onnx_export_gives_the_same_scores(trained, onnx_exports, data, capsys):
    for algo in ("adip", "erm_lp"):
        ref = evaluate(run_of(trained, algo), data)
        got = evaluate(onnx_exports[algo].model_path, data)
        assert got.kind == "onnx" and (got.overall.confusion == ref.overall.confusion).all()
        assert all((got.domains[d].confusion == ref.domains[d].confusion).all() for d in ref.domains)
    (data / "art" / "horse").rename(data / "art" / "zebra")
    rc, _, err = cli(capsys, onnx_exports["adip"].model_path, "--data", data / "art")
    # the tiny test teacher has no exportable text tower: the one line says so and names the run directory
    assert rc == 2 and err.count("\n") == 1 and "without a text tower" in err and "pass the run directory" in err


def test_unreadable_images_are_counted_not_fatal(trained, data, capsys):
    folder = data / "photo"
    (folder / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "dog" / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    run = run_of(trained, "erm_lp")
    rc, out, err = cli(capsys, run, "--data", folder, "--json")
    assert rc == 0
    d = json.loads(out)
    assert d["overall"]["images"] == 9
    assert sorted(Path(u["path"]).name for u in d["unreadable"]) == ["broken.png", "gone.jpg"]
    assert "2 of 11 images could not be read" in err
    rc, out, _ = cli(capsys, run, "--data", folder)
    assert "2 of 11 images could not be read (not scored):" in out and "broken.png: " in out


def test_bad_models_give_one_line(trained, data, tmp_path, capsys):
    cases = [(tmp_path / "nothing", "does not exist"),
             (trained, "is not a vl2v run directory"),
             (data / "art" / "cat" / "000.png", "cannot predict with")]
    for model, message in cases:
        rc, out, err = cli(capsys, model, "--data", data)
        assert rc == 2 and out == "" and err.count("\n") == 1 and message in err, err
    rc, _, err = cli(capsys, run_of(trained, "adip"), "--data", tmp_path / "absent")
    assert rc == 2 and err.count("\n") == 1 and "does not exist" in err
    rc, _, err = cli(capsys, run_of(trained, "adip"), "--data", data, "--batch-size", "0")
    assert rc == 2 and "--batch-size must be at least 1" in err


def test_help_describes_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = capsys.readouterr().out
    for flag in ("--data", "--which", "--json", "--batch-size", "--store"):
        assert flag in out
