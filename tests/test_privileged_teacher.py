"""The privileged diagnostic teacher (--teacher privileged:alpha=A): what it trains on, how it grades, how it
is labelled, and what an experiment with it must name."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import build_image_folder
from helpers import tiny_cfg
from vl2v.data.dataset import load_domain_data
from vl2v.errors import ConfigError
from vl2v.teachers import create_teacher
from vl2v.teachers.privileged import NotBoundError, PrivilegedTeacher, bind_to_experiment


def _teacher(alpha: float) -> PrivilegedTeacher:
    t = create_teacher("privileged", alpha=alpha, base="tiny-test", cache=False)
    assert isinstance(t, PrivilegedTeacher)
    return t


@pytest.fixture
def data(tmp_path):
    return load_domain_data(build_image_folder(tmp_path / "d", per_class=5)).with_seed(1)


def test_trains_on_sources_training_and_target_validation_splits_only(data):
    t = _teacher(1.0)
    seen = {}
    real = t.bind

    def spy(views, labels, text, **kw):
        seen.update(n=len(labels), test=len(kw["test_labels"]), kw=kw)
        return real(views, labels, text, **kw)

    t.bind = spy
    bind_to_experiment(t, data, 2, ["cat", "dog", "horse"], ["a photo of a {c}."], log=lambda s: None)
    train = sum(len(data.split_items(d, "in")) for d in (0, 1)) + len(data.split_items(2, "out"))
    assert seen["n"] == train and seen["test"] == len(data.split_items(2, "in"))
    assert seen["kw"]["what"] == "sources:in+target:out" and seen["kw"]["trial_seed"] == 1
    ident = t.identity()
    assert ident.startswith("DIAGNOSTIC-privileged(") and "target=sketch" in ident and "trial_seed=1" in ident
    assert set(t.binding["target_test_acc"]) == {"privileged_head", "base", "blend"}


def test_alpha_grades_between_the_base_and_the_head(data):
    x = torch.rand(4, 3, 24, 24)
    out = {}
    for a in (0.0, 0.5, 1.0):
        t = _teacher(a)
        bind_to_experiment(t, data, 0, ["cat", "dog", "horse"], ["{c}"], log=lambda s: None)
        out[a] = t.embed_images(x)
    base = F.normalize(t.base.embed_images(x), dim=-1)
    assert torch.allclose(out[0.0], base, atol=1e-6)
    assert not torch.allclose(out[1.0], base, atol=1e-3)
    mid = F.normalize(0.5 * out[1.0] + 0.5 * base, dim=-1)
    assert torch.allclose(out[0.5], mid, atol=1e-5)
    assert torch.equal(t.embed_texts(["a dog"]), t.base.embed_texts(["a dog"]))  # the base teacher's texts


def test_an_unbound_teacher_refuses_to_answer():
    t = _teacher(0.5)
    with pytest.raises(NotBoundError, match="one --target, one --seed"):
        t.embed_images(torch.rand(1, 3, 24, 24))
    assert "unbound" in t.identity()


@pytest.mark.parametrize("bad", ["alpha=2", "alpha=x", "gamma=1"])
def test_bad_specs(bad):
    from vl2v.teachers.base import TeacherError

    with pytest.raises(TeacherError):
        create_teacher(f"privileged:{bad}", base="tiny-test", cache=False)


@pytest.mark.parametrize("value", ["abc", "2", "-0.5"])
def test_a_spec_part_is_typed_as_the_teacher_opt_is(value):
    """``privileged:alpha=V`` goes through PrivilegedOptions as ``--teacher-opt alpha=V`` does: the same one-line
    typed error (before the base teacher is built), only the place it was written differs."""
    from vl2v.teachers.base import TeacherError

    with pytest.raises(TeacherError) as in_spec:
        create_teacher(f"privileged:alpha={value}", base="tiny-test", cache=False)
    with pytest.raises(TeacherError) as as_opt:
        create_teacher("privileged", alpha=value, base="tiny-test", cache=False)
    spec_msg, opt_msg = str(in_spec.value), str(as_opt.value)
    assert spec_msg.startswith(f"teacher spec 'privileged:alpha={value}': alpha")
    assert opt_msg.startswith("--teacher-opt for teacher 'privileged': alpha")
    assert spec_msg.split(": ", 1)[1] == opt_msg.split(": ", 1)[1]
    assert "\n" not in spec_msg


def test_spec_parts_and_teacher_opts():
    """The spec's alpha and base are typed values; an option given both ways is the --teacher-opt one."""
    t = create_teacher("privileged:alpha=0.25,base=tiny-test", cache=False)
    assert isinstance(t, PrivilegedTeacher) and t.alpha == 0.25 and t.base.backend == "tiny-test"
    assert create_teacher("privileged:alpha=0.25", alpha="0.75", base="tiny-test", cache=False).alpha == 0.75
    assert create_teacher("privileged", base="tiny-test", cache=False).alpha == 0.5  # the default


def test_an_experiment_must_name_one_target_and_one_seed(tmp_path):
    from vl2v.experiment.setup import check_experiment

    folder = build_image_folder(tmp_path / "d")
    for kw in ({}, {"targets": (0, 1)}, {"targets": (0,), "seeds": (0, 1)}):
        cfg = tiny_cfg(folder, tmp_path / "r", ["adip"], teacher="privileged",
                       teacher_options={"alpha": "0.5", "base": "tiny-test"}, **kw)
        with pytest.raises(ConfigError, match="exactly one --target and one --seed"):
            check_experiment(cfg)
    # an experiment without a teacher-using algorithm does not care
    check_experiment(tiny_cfg(folder, tmp_path / "r", ["erm_ft"], teacher="privileged"))


@pytest.mark.e2e
def test_experiment_with_the_privileged_teacher(tmp_path):
    from vl2v.experiment.run import run_experiment

    folder = build_image_folder(tmp_path / "d", per_class=5)
    logs: list[str] = []
    cfg = tiny_cfg(folder, tmp_path / "r", ["zeroshot", "adip"], targets=(1,), teacher="privileged",
                   teacher_options={"alpha": 0.75, "base": "tiny-test", "cache": False})
    result = run_experiment(cfg, log=logs.append)
    assert "DIAGNOSTIC-privileged(alpha=0.75;target=photo;trial_seed=0" in result["text"]
    assert any("DIAGNOSTIC privileged teacher" in line for line in logs)
    assert {f["algorithm"] for f in result["finals"]} == {"zeroshot", "adip"}


@pytest.mark.e2e
def test_the_teacher_quality_curve_command(tmp_path, capsys):
    """`vl2v curve`: per alpha the teacher's zero-shot and the students' gains over the baseline's ERM-FT and
    ADiP(lam=0), the base teacher's own runs as alpha = 0."""
    import json

    from vl2v.cli import main
    from vl2v.evaluation.curve import collect_curve
    from vl2v.experiment.run import run_experiment

    folder = build_image_folder(tmp_path / "d", per_class=5)
    base = run_experiment(tiny_cfg(folder, tmp_path / "base", ["zeroshot", "erm_ft", "adip", "adip:lam=0", "kd"],
                                   targets=(1,)), log=lambda s: None)
    priv = {}
    for a in (0.5, 1.0):
        priv[a] = run_experiment(tiny_cfg(folder, tmp_path / f"a{a}", ["zeroshot", "adip", "kd"], targets=(1,),
                                          teacher="privileged",
                                          teacher_options={"alpha": a, "base": "tiny-test", "cache": False}),
                                 log=lambda s: None)
    points = collect_curve([tmp_path / "a0.5", tmp_path / "a1.0"], [tmp_path / "base"])
    assert [(p.alpha, p.target, p.seed) for p in points] == [(0.0, "photo", 0), (0.5, "photo", 0), (1.0, "photo", 0)]
    ood = lambda res, algo: next(f["selected"]["ood_acc"] for f in res["finals"] if f["label"] == algo)  # noqa: E731
    for p in points:
        res = base if p.alpha == 0 else priv[p.alpha]
        assert p.teacher_zeroshot == pytest.approx(ood(res, "zeroshot"))
        assert p.diff("ADiP - ERM-FT") == pytest.approx(ood(res, "adip") - ood(base, "erm_ft"))
        assert p.diff("ADiP - ADiP(lam=0)") == pytest.approx(ood(res, "adip") - ood(base, "adip (lam=0)"))
        assert p.diff("KD - ERM-FT") == pytest.approx(ood(res, "kd") - ood(base, "erm_ft"))
        assert p.diff("SD - ERM-FT") is None
        # the ADiP student's final cos(z, I_t) to its own teacher on the target (zeroshot ran first: stored answers)
        assert p.cos["adip"] == next(f["teacher_cos"]["mean"] for f in res["finals"] if f["label"] == "adip")
    capsys.readouterr()
    assert main(["curve", str(tmp_path / "a0.5"), str(tmp_path / "a1.0"), "--baseline", str(tmp_path / "base"),
                 "--out", str(tmp_path / "curve")]) == 0
    out = capsys.readouterr().out
    assert "DIAGNOSTIC" in out and "| 0.5 (privileged, DIAGNOSTIC) | 1 × 1 |" in out and "ADiP cos(z, I_t)" in out
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 1000
    assert len(json.loads((tmp_path / "curve" / "curve.json").read_text())["points"]) == 3
    assert main(["curve", str(tmp_path / "base")]) == 2  # no privileged runs: a one-line error
    from vl2v.evaluation.html_report import write_html_report

    runs = [tmp_path / "base", tmp_path / "a0.5", tmp_path / "a1.0"]
    html = write_html_report(runs, tmp_path / "r.html").read_text()
    assert "Teacher-quality curve (DIAGNOSTIC teachers)" in html and "ADiP - ERM-FT" in html
    assert "Teacher-quality curve" not in write_html_report([tmp_path / "base"], tmp_path / "b.html").read_text()
