"""What the reports print, from hand-written run summaries: teacher bills (and the older store counters),
protocol order of algorithms, no error bars for one seed, the data-stream line, mistakes ranked by margin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vl2v.evaluation import figures as F
from vl2v.evaluation.html_report import _query_html, _stream_lines
from vl2v.evaluation.report import bill_table, hparams_table
from vl2v.evaluation.tables import (
    BILL_NOTE,
    OLD_BILL,
    base_algorithm,
    build_tables,
    protocol_order,
    selected_stages,
    teacher_bills,
)
from vl2v.runs.summary import HParamPick


def bill(needed: tuple[int, int], paid: tuple[int, int]) -> dict:
    return {"needed": {"image": needed[0], "text": needed[1]}, "paid": {"image": paid[0], "text": paid[1]},
            "store_hits": {"image": needed[0] - paid[0], "text": needed[1] - paid[1]}}


def final(algorithm: str, target: int = 0, seed: int = 0, ood: float = 0.5, label: str | None = None, **extra) -> dict:
    f = {"algorithm": algorithm, "label": label or algorithm, "target": target, "trial_seed": seed,
         "selected": {"ood_acc": ood, "id_acc": ood + 0.1, "val_acc": ood + 0.1, "stage": "ft", "step": 4},
         "n_train_images": 100, "queries": {"image_queries": 0, "image_hits": 0, "text_queries": 0, "seconds": 1.5}}
    f.update(extra)
    return f


# --------------------------------------------------------------------------- teacher bills
def test_bill_table_needed_paid_and_store_hits():
    finals = [final("adip", seed=0, teacher_bill=bill((100, 7), (100, 7))),  # first run: pays everything
              final("adip", seed=1, teacher_bill=bill((100, 7), (0, 0))),  # same images: all in the store
              final("erm_lp", teacher_bill=bill((0, 0), (0, 0)))]
    bills = teacher_bills(finals)
    assert [b.row for b in bills] == ["erm_lp", "adip"]  # protocol order
    adip = bills[1]
    assert adip.runs == 2 and adip.train_images == 200
    assert adip.needed == {"image": 200, "text": 14} and adip.paid == {"image": 100, "text": 7}
    assert adip.store_hits == {"image": 100, "text": 7} and adip.per_image(adip.needed) == 1.0
    md = bill_table(finals)
    assert BILL_NOTE in md and "needed: what the run would pay alone" in md and "paid: what this process sent" in md
    assert "| adip | 2 | 1.00 | 200 | 14 | 100 | 7 | 100 | 7 |" in md
    assert "| erm_lp | 1 | 0.00 | 0 | 0 | 0 | 0 | 0 | 0 |" in md
    assert md.index("| erm_lp |") < md.index("| adip |")
    assert OLD_BILL not in md


def test_older_runs_fall_back_to_store_counters():
    old = final("kd", queries={"image_queries": 40, "image_hits": 60, "text_queries": 3, "text_hits": 0})
    new = final("kd", seed=1, teacher_bill=bill((100, 3), (10, 0)))
    bills = teacher_bills([old, new])
    assert [b.row for b in bills] == ["kd", f"kd ({OLD_BILL})"]  # never summed together
    legacy = bills[1]
    assert legacy.legacy and legacy.paid == {"image": 40, "text": 3} and legacy.store_hits["image"] == 60
    md = bill_table([old, new])
    assert f"| kd ({OLD_BILL}) | 1 | - | - | - | 40 | 3 | 60 | 0 |" in md
    assert "| kd | 1 | 1.00 | 100 | 3 | 10 | 0 | 90 | 3 |" in md
    assert "store's counters" in md
    assert legacy.as_dict()["needed"] is None and legacy.as_dict()["source"] == OLD_BILL
    assert bills[0].as_dict()["needed_image_per_train_image"] == 1.0


def test_no_teacher_no_bill_table():
    assert bill_table([final("erm_lp"), final("erm_ft", teacher_bill=bill((0, 0), (0, 0)))]) == ""


def _view(f: dict, predictions=None, config=None, path: Path = Path(".")) -> F.RunView:
    return F.RunView(path=path, label=f["label"], algorithm=f["algorithm"], target=f["target"], seed=f["trial_seed"],
                     domains=["a", "b"], summary=f, config=config or {}, _predictions=predictions)


def test_html_bill_table_and_figure():
    runs = [_view(final("adip", teacher_bill=bill((100, 7), (30, 7)))),
            _view(final("zeroshot", queries={"image_queries": 5, "image_hits": 0, "text_queries": 7}))]
    page = _query_html(runs)
    assert page.index("zeroshot") < page.index("adip")
    assert "<th>adip</th><td>1</td><td>1.00</td><td>100</td><td>7</td><td>30</td><td>7</td><td>70</td><td>0</td>" in page
    assert f"zeroshot ({OLD_BILL})" in page and "what this process sent" in page
    fig = F.query_bill(runs)
    ax = fig.axes[0]
    top_down = sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])
    assert [t.get_text() for t in top_down] == [f"zeroshot ({OLD_BILL})", "adip"]
    assert F.query_bill([_view(final("erm_lp", teacher_bill=bill((0, 0), (0, 0))))]) is None


# --------------------------------------------------------------------------- protocol order
def test_protocol_order_by_base_algorithm():
    assert base_algorithm("adip (lam=0.25)") == base_algorithm("adip:lam=0.25") == "adip"
    assert base_algorithm("adip [teacher lit]") == base_algorithm("adip + SWAD") == "adip"
    labels = ["mine", "sd", "adip (lam=0.25)", "kd", "adip", "zeroshot [teacher lit]", "other", "erm_ft", "rise",
              "erm_lp", "adip + SWAD"]
    assert protocol_order(labels) == ["zeroshot [teacher lit]", "erm_lp", "erm_ft", "kd", "rise", "adip (lam=0.25)",
                                      "adip", "adip + SWAD", "sd", "mine", "other"]


def test_tables_and_stage_tables_in_protocol_order():
    finals = [final(a, label=lab) for a, lab in (("sd", "sd"), ("adip", "adip:lam=0.25"), ("kd", "kd"),
                                                  ("zeroshot", "zeroshot"), ("erm_lp", "erm_lp"))]
    tables = build_tables(finals, ["a", "b"])
    want = ["zeroshot", "erm_lp", "kd", "adip:lam=0.25", "sd"]
    assert tables["ood"].rows() == want and tables["id"].rows() == want
    md = tables["ood"].markdown()
    assert [line.split(" | ")[0][2:] for line in md.splitlines()[2:]] == want
    stages = selected_stages(finals, ["a", "b"])
    assert [line.split(" | ")[0][2:] for line in stages.splitlines()[2:]] == want
    picks = [HParamPick(lab, 0, 0, 1, 0.5, [0, 1], {}) for lab in ("sd", "kd", "erm_ft")]
    rows = hparams_table(picks, ["a", "b"]).splitlines()[4:]
    assert [r.split(" | ")[0][2:] for r in rows] == ["erm_ft", "kd", "sd"]
    data = tables["ood"].as_dict()
    assert [r["algorithm"] for r in data["rows"]] == want
    assert data["rows"][0]["targets"] == {"a": {"mean": 50.0, "se": None, "n": 1}}


def test_figures_in_protocol_order():
    runs = [_view(final(a)) for a in ("adip", "kd", "erm_lp")]
    assert F.ordered_labels(runs) == ["erm_lp", "kd", "adip"]
    fig = F.ood_bars(runs, ["a", "b"])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["erm_lp", "kd", "adip"]


# --------------------------------------------------------------------------- error bars
def _errorbars(fig) -> list:
    return [c.errorbar for c in fig.axes[0].containers if getattr(c, "errorbar", None) is not None]


def test_no_error_bars_with_one_seed():
    one = [_view(final(a, target=t, seed=0)) for a in ("erm_lp", "adip") for t in (0, 1)]
    fig = F.ood_bars(one, ["a", "b"])
    assert not _errorbars(fig)
    assert "one trial seed" in fig.axes[0].get_title()
    two = one + [_view(final(a, target=t, seed=1, ood=0.7)) for a in ("erm_lp", "adip") for t in (0, 1)]
    fig = F.ood_bars(two, ["a", "b"])
    assert len(_errorbars(fig)) == 2 and "SE over 2 trial seeds" in fig.axes[0].get_title()


def test_lambda_sweep_without_error_bars_for_one_seed():
    def adip(lam: float, seed: int) -> F.RunView:
        return _view(final("adip", seed=seed, label=f"adip (lam={lam})"), config={"hparams": {"lam": lam}})

    fig = F.lambda_sweep([adip(0.2, 0), adip(0.8, 0)])
    assert not [c for c in fig.axes[0].containers if c.has_yerr]
    fig = F.lambda_sweep([adip(0.2, 0), adip(0.8, 0), adip(0.2, 1), adip(0.8, 1)])
    assert any(c.has_yerr for c in fig.axes[0].containers)


# --------------------------------------------------------------------------- mistakes
def _preds(items: list[dict]) -> dict:
    return {"classes": ["cat", "dog", "horse"], "root": "/nonexistent", "items": items}


def test_mistakes_ranked_by_margin_when_stored():
    items = [{"path": f"x/{i}.png", "label": 0, "pred": 1, "conf": 1.0, "margin": m} for i, m in enumerate((3.0, 25.0, 9.0))]
    items.append({"path": "x/ok.png", "label": 2, "pred": 2, "conf": 1.0, "margin": 0.0})
    run = _view(final("adip"), predictions=_preds(items))
    assert F.mistakes_ranked_by_margin([run])
    fig = F.confident_mistakes([run])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert [t.split("(")[-1] for t in titles] == ["margin 25.0)", "margin 9.0)", "margin 3.0)"]
    # older predictions (conf only): ranked by confidence, labelled so
    old = [{k: v for k, v in it.items() if k != "margin"} | {"conf": c} for it, c in zip(items, (0.6, 0.9, 0.8, 1.0))]
    run = _view(final("adip"), predictions=_preds(old))
    assert not F.mistakes_ranked_by_margin([run])
    titles = [ax.get_title() for ax in F.confident_mistakes([run]).axes if ax.get_title()]
    assert [t.split("(")[-1] for t in titles] == ["0.90)", "0.80)", "0.60)"]


# --------------------------------------------------------------------------- data-stream line
def _trained(algorithm: str, digests: dict[str, str], target: int = 0, seed: int = 0) -> F.RunView:
    stages = {name: {"role": role, "seed": 1, "digest": d, "steps": 4} for (name, role), d in
              zip((("lp", "frozen"), ("ft", "tune")), digests.values())}
    cfg = {"train": {"schedule": {"steps": 4, "lr": 0.001, "frozen_steps": 6}, "batch_size": 4, "future_key": 1},
           "data_stream": {"kind": "stored", "views": 2, "view_seed": 3}}
    return _view(final(algorithm, target=target, seed=seed,
                       data_stream={"kind": "stored", "views": 2, "stages": stages}), config=cfg)


def test_stream_line_as_results_md_prints_it():
    same = [_trained(a, {"lp": "aa", "ft": "bb"}) for a in ("erm_ft", "kd")] + [_view(final("zeroshot"))]
    (line,) = _stream_lines(same)
    assert line.startswith("data stream (the same for every algorithm): stored views, K=2 per image (view seed 3")
    assert "fine-tuning 4 steps at lr 0.001" in line and "batch 4 per source domain" in line
    assert "Checked:" in line and "DIFFERENT" not in line
    other = same + [_trained("adip", {"lp": "aa", "ft": "cc"})]
    (line,) = _stream_lines(other)
    assert "fine-tuning stages: DIFFERENT streams" in line
    assert _stream_lines([_view(final("zeroshot"))]) == []  # nothing trained: nothing to say


@pytest.mark.parametrize("n", [1, 3])
def test_yerr_helper(n):
    y = F._yerr([1.0, 2.0], [n, 1])
    if n == 1:
        assert y is None
    else:
        assert y[0] == 1.0 and np.isnan(y[1])
