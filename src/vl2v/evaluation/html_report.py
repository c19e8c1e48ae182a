"""The HTML report: one self-contained page of tables and matplotlib figures for a set of runs.

``write_html_report(paths, out)`` reads run directories (or folders of them),
draws the figures of :mod:`vl2v.evaluation.figures`, and writes ``out`` (an
``.html`` file, or ``DIR/report.html``). Every figure is embedded in the page
as a base64 PNG, so the page opens from disk, can be mailed as one file, and
needs no network; the same PNGs are also written to ``<page stem>_figures/``
for slides and documents. See docs/report.md for what each figure shows.
"""

from __future__ import annotations

import base64
import copy
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vl2v import __version__
from vl2v.evaluation import figures as F
from vl2v.evaluation.tables import BILL_NOTE, OLD_BILL_NOTE, ResultTable
from vl2v.runs.layout import ExperimentDir
from vl2v.runs.summary import collect_runs, group_by_dataset
from vl2v.utils.io import atomic_write_bytes, atomic_write_text

FIGURE_DPI = 110


@dataclass
class DatasetRuns:
    name: str
    domains: list[str]
    classes: list[str]
    runs: list[F.RunView] = field(default_factory=list)


def load_views(paths: Sequence[str | Path]) -> list[DatasetRuns]:
    """Run views grouped by dataset, in the order runs are found."""
    return views_of(collect_runs(list(paths)))


def views_of(entries: Sequence[Any]) -> list[DatasetRuns]:
    """:func:`load_views` on runs already read (:func:`vl2v.runs.summary.collect_runs`'s entries)."""
    out: list[DatasetRuns] = []
    groups = group_by_dataset(e for e in entries if "selected" in e.summary)
    for g in groups.values():
        domains = g.domain_names()
        runs = [F.RunView(path=e.run.path, label=e.summary.get("label") or _algo(e), algorithm=_algo(e),
                          target=int(e.summary["target"]), seed=int(e.summary["trial_seed"]), domains=domains,
                          summary=e.summary, records=e.data.records, config=e.config) for e in g.chosen]
        out.append(DatasetRuns(g.name, domains, list(g.classes), runs))
    return out


def _algo(e) -> str:
    return e.summary.get("algorithm") or e.args.get("algorithm", "?")


def _has_student(algorithm: str) -> bool:
    """The registry's capability flag; an algorithm this process has not registered counts as one with a student."""
    info = F.algorithm_info(algorithm)
    return info.has_student if info is not None else True


def headline_label(runs: Sequence[F.RunView]) -> str | None:
    """The algorithm shown in the mistakes grid: the run (default options) of an algorithm whose registry flag
    ``headline`` is set (ADiP, the method this tool is about) if present, else the best mean OOD with a student."""
    with_pred = [r for r in runs if r.predictions]
    labels = F.ordered_labels(with_pred)
    if not labels:
        return None
    for lab in labels:
        info = F.algorithm_info(lab)
        if info is not None and info.headline:
            return lab
    with_pred = [r for r in with_pred if _has_student(r.algorithm)]
    means = {lab: sum(r.ood or 0 for r in with_pred if r.label == lab) / max(1, sum(r.label == lab for r in with_pred))
             for lab in F.ordered_labels(with_pred)}
    return max(means, key=means.get) if means else labels[0]


# --------------------------------------------------------------------------- HTML pieces
def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=FIGURE_DPI)
    return buf.getvalue()


class _Page:
    def __init__(self, fig_dir: Path | None) -> None:
        self.parts: list[str] = []
        self.toc: list[tuple[str, str]] = []
        self.fig_dir = fig_dir
        self.n_fig = 0
        self.files: list[Path] = []

    def h2(self, text: str, anchor: str) -> None:
        self.toc.append((anchor, text))
        self.parts.append(f'<h2 id="{_esc(anchor)}">{_esc(text)}</h2>')

    def h3(self, text: str) -> None:
        self.parts.append(f"<h3>{_esc(text)}</h3>")

    def p(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{text}</p>')

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def figure(self, fig, name: str, caption: str) -> None:
        if fig is None:
            return
        data = _png(fig)
        self.n_fig += 1
        fname = f"{self.n_fig:02d}_{name}.png"
        if self.fig_dir is not None:
            atomic_write_bytes(self.fig_dir / fname, data)
            self.files.append(self.fig_dir / fname)
        b64 = base64.b64encode(data).decode("ascii")
        self.parts.append(f'<figure><img class="fig" alt="{_esc(caption)}" data-file="{_esc(fname)}" '
                          f'src="data:image/png;base64,{b64}"><figcaption>{_esc(caption)}</figcaption></figure>')


def _table_html(table: ResultTable, caption: str) -> str:
    head = ["Algorithm"] + table.domains + ["Avg"]
    rows = []
    for r in table.rows():
        rows.append("<tr><th>" + _esc(table.label(r)) + "</th>" + "".join(f"<td>{_esc(c)}</td>" for c in table.formatted(r))
                    + "</tr>")
    return (f'<table><caption>{_esc(caption)}</caption><thead><tr>' + "".join(f"<th>{_esc(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _query_html(runs: Sequence[F.RunView]) -> str:
    bills = F.run_bills(runs)
    if not any(b.any for b in bills):
        return ""
    rows = []
    for b in bills:
        per = b.per_image(b.needed)
        needed = ("<td>-</td>" * 3 if b.legacy else
                  f"<td>{'-' if per is None else f'{per:.2f}'}</td><td>{b.needed['image']:,}</td><td>{b.needed['text']:,}</td>")
        rows.append(f"<tr><th>{_esc(b.row)}</th><td>{b.runs}</td>{needed}<td>{b.paid['image']:,}</td>"
                    f"<td>{b.paid['text']:,}</td><td>{b.store_hits['image']:,}</td><td>{b.store_hits['text']:,}</td>"
                    f"<td>{b.seconds:.0f}</td></tr>")
    old = f"<p class='note'>{_esc(OLD_BILL_NOTE)}</p>" if any(b.legacy for b in bills) else ""
    priced = [b for b in bills if b.cost is not None]
    if priced:  # a teacher sold per query: the same bill in money
        old += ("<table class='bill'><caption>The same bill in money, at the price each run's teacher stated"
                "</caption><thead><tr><th>Algorithm</th><th>needed (alone)</th><th>paid (this process)</th></tr>"
                "</thead><tbody>" + "".join(f"<tr><th>{_esc(b.row)}</th><td>{b.currency} {b.cost['needed']:.2f}</td>"
                                            f"<td>{b.currency} {b.cost['paid']:.2f}</td></tr>" for b in priced)
                + "</tbody></table>")
    return ("<table class='bill'><caption>Teacher queries: the bill, summed over runs (a query is one image or one "
            "class prompt sent to the teacher)</caption><thead><tr><th>Algorithm</th><th>runs</th>"
            "<th>needed image queries / training image</th><th>needed image queries</th><th>needed text queries</th>"
            "<th>paid image queries</th><th>paid text queries</th><th>store hits (image)</th>"
            "<th>store hits (text)</th><th>teacher seconds</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            f"<p class='note'>{_esc(BILL_NOTE)}</p>" + old)


def _stream_lines(runs: Sequence[F.RunView]) -> list[str]:
    """``results.md``'s data-stream line (:func:`~vl2v.evaluation.results.stream_statement`) for these runs: one
    per distinct training setting among the trained runs (settings from each run's config.json)."""
    from vl2v.config import ExperimentConfig, Schedule, TrainConfig, from_dict
    from vl2v.evaluation.results import stream_statement

    groups: dict[str, tuple[Any, list[F.RunView]]] = {}
    for r in runs:
        if not (r.summary.get("data_stream") or {}).get("stages") or not r.config.get("train"):
            continue
        train, ds = dict(r.config["train"]), r.config.get("data_stream") or {}
        train = {k: v for k, v in train.items() if k in TrainConfig.__dataclass_fields__}
        train["schedule"] = {k: v for k, v in (train.get("schedule") or {}).items() if k in Schedule.__dataclass_fields__}
        try:
            cfg = ExperimentConfig(views=int(ds.get("views") or 0), view_seed=int(ds.get("view_seed") or 0),
                                   train=from_dict(TrainConfig, train))
        except (ValueError, TypeError):  # settings this version cannot read: no statement for the run
            continue
        key = repr((cfg.views, cfg.view_seed, cfg.train.data_stream_kind, cfg.train.schedule, cfg.train.batch_size,
                    cfg.train.select_stage))
        groups.setdefault(key, (cfg, []))[1].append(r)
    lines = []
    for cfg, rs in groups.values():
        line = stream_statement(cfg, [dict(r.summary, target=r.target, trial_seed=r.seed) for r in rs])
        if line and len(groups) > 1:
            line = f"{', '.join(F.ordered_labels(rs))}: {line}"
        if line:
            lines.append(line)
    return lines


def _runs_html(runs: Sequence[F.RunView], base: Path) -> str:
    rows = []
    order = {lab: i for i, lab in enumerate(F.ordered_labels(runs))}
    for r in sorted(runs, key=lambda v: (v.target, order[v.label], v.seed)):
        sel = r.summary.get("selected") or {}
        try:
            rel = Path(r.path).resolve().relative_to(base.resolve())
        except ValueError:
            rel = Path(r.path).resolve()
        status = "unfinished" if r.incomplete else "done"
        swad = r.summary.get("swad") or {}
        swad_ood = f"{100 * float(swad['ood_acc']):.1f}" if "ood_acc" in swad else "-"
        rows.append(f"<tr><td>{_esc(r.label)}</td><td>{_esc(r.target_name)}</td><td>{r.seed}</td>"
                    f"<td>{100 * float(sel.get('ood_acc', float('nan'))):.1f}</td>"
                    f"<td>{100 * float(sel.get('id_acc', float('nan'))):.1f}</td>"
                    f"<td>{_esc(sel.get('stage', ''))} {_esc(sel.get('step', ''))}</td>"
                    f"<td>{swad_ood}</td>"
                    f"<td>{float(r.summary.get('wall_time') or 0):.0f}</td><td>{status}</td>"
                    f"<td><code>{_esc(rel)}</code></td></tr>")
    return ("<table class='runs'><caption>Every run (OOD: target domain's 'in' split at the selected checkpoint; "
            "ID: source domains' held-out split)</caption><thead><tr><th>algorithm</th><th>target</th><th>seed</th>"
            "<th>OOD %</th><th>ID %</th><th>selected (stage, step)</th><th>SWAD OOD %</th><th>wall s</th>"
            "<th>status</th><th>run directory</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI','DejaVu Sans',sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:18px 28px 60px;background:#fff;box-shadow:0 0 8px rgba(0,0,0,.06)}
h1{font-size:1.55em;margin:.4em 0 .2em} h2{border-bottom:2px solid #e6e6e6;padding-bottom:4px;margin-top:1.8em}
h3{margin-bottom:.3em;color:#333}
.meta{color:#555;font-size:.9em;line-height:1.5} code{font-size:.85em;background:#f3f3f3;padding:1px 4px;border-radius:3px;word-break:break-all}
table{border-collapse:collapse;margin:10px 0 18px;font-size:.88em} caption{text-align:left;font-weight:600;padding:4px 0;color:#333}
th,td{border:1px solid #ddd;padding:4px 9px;text-align:right} thead th{background:#f1f4f8;text-align:center}
tbody th{text-align:left;background:#fbfbfb} table.runs td{text-align:left}
figure{margin:10px 0 26px} img.fig{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;margin-top:4px;max-width:980px}
nav{font-size:.88em;margin:8px 0 4px} nav a{margin-right:14px;color:#2a5db0;text-decoration:none}
.note{color:#666;font-size:.88em} .warn{color:#a15c00}
"""


def _results_section(page: _Page, g: DatasetRuns, pre: str) -> None:
    """The heading, what ran, the data-stream check, the tables and the accuracy figures of one dataset."""
    from vl2v.evaluation.report import ID_TITLE, OOD_TITLE, ORACLE_TITLE
    from vl2v.evaluation.tables import NOVEL_TITLES, build_novel_tables, build_tables, novel_preamble, table_sections

    runs = g.runs
    seeds = sorted({r.seed for r in runs})
    targets = sorted({r.target for r in runs})
    arg = lambda key: next((r.config.get("args", {}).get(key) for r in runs if r.config.get("args", {}).get(key)), None)  # noqa: E731
    size = next((r.config.get("train", {}).get("image_size") for r in runs if r.config.get("train")), None)
    n_inc = sum(r.incomplete for r in runs)
    page.h2(f"{g.name}: results", pre + "results")
    page.p(f"{len(runs)} runs: {len(F.ordered_labels(runs))} algorithms × {len(targets)} target domains "
           f"({_esc(', '.join(g.domains[t] for t in targets if t < len(g.domains)))}) × trial seeds {_esc(seeds)}. "
           f"Student <code>{_esc(arg('student'))}</code> at {_esc(size)} px; teacher "
           f"<code>{_esc(arg('teacher_identity'))}</code>.", "meta")
    if n_inc:
        page.p(f"{n_inc} runs are unfinished and summarised from their records so far.", "warn")
    for line in _stream_lines(runs):
        page.p(_esc(line), "warn" if "DIFFERENT" in line else "meta")
    fins = [dict(r.summary, label=r.label, target=r.target, trial_seed=r.seed) for r in runs]
    tables = build_tables(fins, g.domains)
    for table, caption in table_sections(tables, OOD_TITLE, ID_TITLE):
        page.raw(_table_html(table, caption))
    if "oracle_ood" in tables:
        page.raw(_table_html(tables["oracle_ood"], ORACLE_TITLE))
    novel = build_novel_tables(fins, g.domains)
    if novel:
        page.h2(f"{g.name}: classes never seen in training", pre + "novel")
        page.p(_esc(novel_preamble(fins)).replace("**", ""), "note")
        for name, caption in NOVEL_TITLES.items():
            page.raw(_table_html(novel[name], caption))
    se = ("error bars: standard error over seeds, none for a mean over one seed" if len(seeds) > 1 else
          "one trial seed, so no error bars")
    page.figure(F.ood_bars(runs, g.domains), pre + "ood_bars",
                f"OOD accuracy of every algorithm on each held-out target domain (bars: mean over trial seeds; "
                f"{se}; 'Avg' only when every domain was a target).")
    page.figure(F.id_vs_ood(runs, g.domains), pre + "id_vs_ood",
                "In-domain (x) against out-of-domain (y) accuracy. A method above the dashed line generalises "
                "to the unseen domain as well as it fits the seen ones; VL2V-ADiP aims to move up at equal ID.")
    sweep = F.lambda_sweep(runs)
    if sweep is not None:
        page.h2(f"{g.name}: ADiP λ sweep", pre + "lambda")
        page.figure(sweep, pre + "lambda_sweep",
                    "ADiP's accuracy against λ, the weight of the image-embedding term of the loss "
                    "(1 − λ weights the text term). Mean over targets"
                    + (" ± SE over seeds." if len(seeds) > 1 else " (one trial seed: no error bars)."))


def _bill_section(page: _Page, g: DatasetRuns, pre: str) -> None:
    page.h2(f"{g.name}: teacher-query bill", pre + "queries")
    q = F.query_bill(g.runs)
    if q is None:
        page.p("These runs made no teacher queries (or recorded none).", "note")
        return
    page.figure(q, pre + "query_bill",
                "Teacher image queries per training image, per algorithm, summed over its runs. Bar length: "
                "needed, the distinct teacher answers the runs use (what each would pay alone, with an "
                "empty store). Dark: paid, the images this process sent to the teacher on the runs' behalf "
                "(what a pay-per-query vendor bills); light: store hits, already in the embedding store "
                "(paid by an earlier run or experiment). Hatched rows: older runs without a bill, from the "
                "store's counters.")
    page.raw(_query_html(g.runs))


def _predictions_section(page: _Page, g: DatasetRuns, pre: str) -> None:
    """Confusion matrices and the most confident mistakes, from the runs' predictions.json."""
    runs, targets = g.runs, sorted({r.target for r in g.runs})
    if headline_label(runs) is None:
        page.h2(f"{g.name}: confusion matrices and mistakes", pre + "confusion")
        page.p("No run has predictions.json (runs written before per-image predictions were recorded, or "
               "zero-shot only), so there are no confusion matrices or mistakes to show.", "note")
        return
    page.h2(f"{g.name}: confusion matrices", pre + "confusion")
    for t in targets:
        page.figure(F.confusion_matrices([r for r in runs if r.target == t],
                                         title=f"target domain: {g.domains[t]} (selected checkpoints, seeds summed)"),
                    f"{pre}confusion_{g.domains[t]}",
                    f"Confusion matrices on target domain {g.domains[t]} ('in' split): rows are true classes, "
                    "columns predictions, cells the % of the true class.")
    page.h2(f"{g.name}: most confident mistakes", pre + "mistakes")
    page.p("Per target domain, the most confidently wrong predictions of ADiP (or, without it, the student "
           "with the best OOD accuracy), over its trial seeds: ranked by the margin of the predicted over the "
           "true class (logit difference, = log-probability gap; it does not saturate as the softmax "
           "probability does), or, for runs that did not record it, by softmax confidence.", "note")
    for t in targets:
        head_t = headline_label([r for r in runs if r.target == t])
        if head_t is None:
            continue
        sub = [r for r in runs if r.target == t and r.label == head_t]
        fig = F.confident_mistakes(sub, title=f"{head_t}, target domain {g.domains[t]}")
        if fig is None:
            page.p(f"{_esc(head_t)} made no mistakes on {_esc(g.domains[t])}.", "note")
        how = "logit margin" if F.mistakes_ranked_by_margin(sub) else "softmax confidence"
        page.figure(fig, f"{pre}mistakes_{g.domains[t]}",
                    f"Most confident mistakes of {head_t} on {g.domains[t]}: true class, predicted class "
                    f"({how}, the ranking).")


def render_html(paths: Sequence[str | Path], fig_dir: Path | None, base: Path, title: str | None = None) -> tuple[str, _Page]:
    entries = collect_runs(list(paths))  # read once: the dataset sections and the curve use the same runs
    # grouping by dataset relabels runs whose label spans two teachers ("adip [teacher lit]"): on copies, so the
    # curve still finds its runs by their own labels
    groups = views_of([copy.copy(e) for e in entries])
    if not groups:
        raise FileNotFoundError(f"no run directories (with results.jsonl) under {', '.join(map(str, paths))}")
    page = _Page(fig_dir)
    for gi, g in enumerate(groups):
        pre = f"d{gi}-"
        _results_section(page, g, pre)
        _bill_section(page, g, pre)
        page.h2(f"{g.name}: training curves", pre + "curves")
        page.p("Per algorithm: training loss (left) and accuracy (right) at every evaluation. Blue: mean accuracy on "
               "the source domains' held-out split (what selects the checkpoint); orange: the held-out target "
               "domain (never used for selection). Stars and the green line: the selected checkpoint. Shaded "
               "bands and labels: training stages. Line styles: trial seeds.", "note")
        for t in sorted({r.target for r in g.runs}):
            fig = F.training_curves([r for r in g.runs if r.target == t], title=f"target domain: {g.domains[t]}")
            page.figure(fig, f"{pre}curves_{g.domains[t]}", f"Training curves, target domain {g.domains[t]}.")
        _predictions_section(page, g, pre)
        page.h2(f"{g.name}: runs", pre + "runs")
        page.raw(_runs_html(g.runs, base))
    _curve_section(page, entries)

    when = time.strftime("%Y-%m-%d %H:%M")
    title = title or "vl2v report: " + ", ".join(g.name for g in groups)
    nav = "<nav>" + "".join(f'<a href="#{_esc(a)}">{_esc(t)}</a>' for a, t in page.toc) + "</nav>"
    doc = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
           "<meta name='viewport' content='width=device-width, initial-scale=1'>"
           f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>"
           f"<h1>{_esc(title)}</h1><p class='meta'>Written {when} by vl2v {__version__} from "
           f"{_esc(', '.join(str(p) for p in paths))}. Leave-one-domain-out, training-domain validation "
           "(DomainBed). Figures are embedded; the page needs no network.</p>"
           + nav + "\n".join(page.parts) + "</main></body></html>\n")
    return doc, page


def _curve_section(page: _Page, entries: Sequence[Any]) -> None:
    """The teacher-quality curve (:mod:`vl2v.evaluation.curve`) when the runs hold DIAGNOSTIC privileged-teacher
    runs and their baselines (ERM-FT, ADiP with lam = 0) side by side; nothing otherwise."""
    from vl2v.evaluation.curve import curve_figure, curve_points, curve_table

    points = curve_points(entries, entries)
    if not any(p.alpha > 0 for p in points):
        return
    page.h2("Teacher-quality curve (DIAGNOSTIC teachers)", "teacher-curve")
    page.p("Each point: one teacher on one target domain and trial seed. x: the teacher's zero-shot accuracy on the "
           "target; y: what a student trained with it gains over ERM-FT (or over ADiP with lam = 0), same stream, "
           "budget and selection. The privileged teachers (alpha > 0) are DIAGNOSTIC: they saw the target domain's "
           "validation split; alpha = 0 is their base teacher. `vl2v curve` prints the same table.", "warn")
    page.figure(curve_figure(points), "teacher_curve", "Student gain against the teacher's out-of-domain zero-shot.")
    page.raw(f"<pre>{_esc(curve_table(points))}</pre>")


def write_html_report(paths: Sequence[str | Path], out: str | Path, title: str | None = None,
                      save_pngs: bool = True) -> Path:
    """Write the report page (``out``: an .html file or a folder for ``report.html``); return its path."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        out = ExperimentDir(out).report_html
    out.parent.mkdir(parents=True, exist_ok=True)
    fig_dir = out.parent / f"{out.stem}_figures" if save_pngs else None
    if fig_dir is not None:
        fig_dir.mkdir(exist_ok=True)
        for old in fig_dir.glob("*.png"):  # figures of an earlier report of other runs
            old.unlink()
    doc, _ = render_html(paths, fig_dir, out.parent, title)
    atomic_write_text(out, doc)
    return out

