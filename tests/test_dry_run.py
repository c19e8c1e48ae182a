"""`vl2v train --dry-run`: the queries a command will send and their cost, before sending any (issue: a bill in
money before the run), checked against what the run then sends, and the per-run bill it records."""

from __future__ import annotations

import json

import pytest

from conftest import TinyTeacher
from vl2v.cli import main
from vl2v.teachers.registry import TEACHERS, register_teacher


class PricedTinyTeacher(TinyTeacher):
    """The tiny test teacher, sold per query."""

    def price(self):
        return {"image": 0.0013, "text": 0.00021, "currency": "USD", "read_on": "2026-12-05", "source": "test"}


@pytest.fixture(autouse=True)
def priced_teacher():
    """The priced stand-in is registered for these tests only (the teacher contract covers real backends)."""
    register_teacher("tiny-priced", white_box=False, summary="test-only tiny teacher with a price")(
        lambda spec=None, **opts: PricedTinyTeacher(**{k: int(v) for k, v in opts.items()}))
    yield
    TEACHERS.unregister("tiny-priced")

ARGS = ["--teacher", "tiny-priced", "--no-pretrained", "--steps", "2", "--frozen-steps", "2", "--batch-size", "4",
        "--image-size", "32", "--eval-every", "2", "--views", "2", "--threads", "1",
        "--algorithm", "zeroshot", "erm_lp", "kd", "adip"]


def _dry(folder, out, store, capsys, *extra):
    assert main(["train", "--data", str(folder), "--store", str(store), "--out", str(out), "--dry-run", "--json",
                 *ARGS, *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_dry_run_predicts_the_queries_and_the_cost_of_the_run(image_folder, tmp_path, capsys):
    store, out = tmp_path / "store.sqlite", tmp_path / "runs"
    plan = _dry(image_folder, out, store, capsys)
    assert not out.exists() or not any(out.rglob("results.jsonl"))  # nothing trained
    assert plan["in_store"] == {"image": 0, "text": 0}
    to_pay = plan["to_pay"]
    assert to_pay["image"] > 0 and to_pay["text"] > 0
    assert plan["cost"] == pytest.approx(to_pay["image"] * 0.0013 + to_pay["text"] * 0.00021)

    assert main(["train", "--data", str(image_folder), "--store", str(store), "--out", str(out), *ARGS]) == 0
    capsys.readouterr()
    finals = [json.loads(p.read_text()) for p in out.rglob("final.json")]
    paid = {k: sum(f["teacher_bill"]["paid"][k] for f in finals) for k in ("image", "text")}
    assert paid == to_pay  # exactly what the dry run said
    assert round(paid["image"] * 0.0013 + paid["text"] * 0.00021, 2) == round(plan["cost"], 2)  # to the cent

    # every run records its own need; ADiP, KD (training views) and zero-shot (evaluation views) are not 0
    need = {}
    for f in finals:
        row = need.setdefault(f["algorithm"], {"image": 0, "text": 0})
        for k in row:
            row[k] += f["teacher_bill"]["needed"][k]
        bill = f["teacher_bill"]
        assert bill["store_hits"] == {k: bill["needed"][k] - bill["paid"][k] for k in ("image", "text")}
    assert need["erm_lp"] == {"image": 0, "text": 0}
    assert need["adip"]["image"] == need["kd"]["image"] > 0 and need["zeroshot"]["image"] > 0
    for algo, row in need.items():  # the dry run's per-algorithm need is the runs' own
        assert (plan["algorithms"][algo]["image"], plan["algorithms"][algo]["text"]) == (row["image"], row["text"])

    # the bill in money: per run at the teacher's price, and in `vl2v report`
    paid_usd = sum(f["teacher_bill"]["cost"]["paid"] for f in finals)
    assert paid_usd == pytest.approx(plan["cost"])
    assert main(["report", str(out)]) == 0
    rep = capsys.readouterr().out
    assert "The same bill in money" in rep and "| adip | USD" in rep
    from vl2v.evaluation.html_report import write_html_report

    html = write_html_report([out], out / "report.html").read_text()
    assert "The same bill in money" in html

    again = _dry(image_folder, out, store, capsys)  # finished runs are reused: nothing more to pay
    assert again["to_pay"] == {"image": 0, "text": 0} and again["cost"] == 0
    assert all(r["finished"] == r["runs"] for r in again["algorithms"].values())
    fresh = _dry(image_folder, tmp_path / "other", store, capsys)  # a new folder: the store has every answer
    assert fresh["to_pay"] == {"image": 0, "text": 0} and fresh["in_store"] == fresh["needed"]


def test_dry_run_text_says_what_and_how_much(image_folder, tmp_path, capsys):
    rc = main(["train", "--data", str(image_folder), "--store", str(tmp_path / "s.sqlite"), "--out",
               str(tmp_path / "o"), "--dry-run", *ARGS])
    text = capsys.readouterr().out
    assert rc == 0
    assert "nothing was sent to the teacher" in text and "queries this command will send" in text
    assert "| adip |" in text and "USD" in text and "read on 2026-12-05" in text
