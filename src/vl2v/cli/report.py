"""``vl2v report RUNS...``: DomainBed-style tables and the HTML report (:mod:`vl2v.evaluation`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vl2v.cli.common import CLIError


def _cmd_report(args: argparse.Namespace) -> int:
    if args.json:
        return _cmd_report_json(args)
    from vl2v.evaluation.report import build_report

    text = build_report(args.runs, latex=args.latex)
    if args.out:
        from vl2v.utils.io import atomic_write_text

        atomic_write_text(args.out, text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    sys.stdout.flush()
    if args.no_html:
        return 0
    from vl2v.evaluation.html_report import write_html_report

    # default: next to --out, else in the (first) folder of runs; only an explicit --html may fail the command
    from vl2v.runs.layout import ExperimentDir

    html = args.html or (Path(args.out).with_suffix(".html") if args.out else ExperimentDir(args.runs[0]).report_html)
    try:
        path = write_html_report(args.runs, html)
    except OSError as exc:
        if args.html:
            raise CLIError(f"cannot write the HTML report to {html}: {exc}") from exc
        print(f"vl2v: warning: no HTML report ({exc}); choose a place with --html PATH", file=sys.stderr)
        return 0
    print(f"wrote HTML report {path}", file=sys.stdout if args.out else sys.stderr)
    return 0


def _cmd_report_json(args: argparse.Namespace) -> int:
    """``--json``: the tables and teacher bills as JSON on stdout (or in --out), and nothing else there; the HTML
    page only with an explicit --html, its message on stderr."""
    from vl2v.cli.listing import print_json
    from vl2v.evaluation.report import report_data

    data = report_data(args.runs)
    if args.out:
        import json

        from vl2v.utils.io import atomic_write_text

        atomic_write_text(args.out, json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print_json(data)
    if args.html and not args.no_html:
        from vl2v.evaluation.html_report import write_html_report

        try:
            path = write_html_report(args.runs, args.html)
        except OSError as exc:
            raise CLIError(f"cannot write the HTML report to {args.html}: {exc}") from exc
        print(f"wrote HTML report {path}", file=sys.stderr)
    return 0


def _cmd_curve(args: argparse.Namespace) -> int:
    import json

    from vl2v.evaluation.curve import collect_curve, curve_data, curve_figure, curve_table

    points = collect_curve(args.runs, args.baseline or [])
    if not any(p.alpha > 0 for p in points):
        raise CLIError(f"no runs with a privileged teacher under {', '.join(args.runs)}: train them with "
                       "`vl2v compare --teacher privileged --teacher-opt alpha=A --target T --seed S ...`")
    text = ("Teacher-quality curve. DIAGNOSTIC: the privileged teachers (alpha > 0) saw the target domain's "
            "validation split; alpha = 0 is their base teacher. Differences in accuracy points on the target's "
            "test split, the same data stream, budget and selection for every algorithm; ERM-FT and ADiP(lam=0) "
            f"from {', '.join(args.baseline or ['-'])}.\n\n" + curve_table(points))
    print(text)
    if args.out:
        from vl2v.utils.io import atomic_write_json, atomic_write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "curve.md", text + "\n")
        atomic_write_json(out / "curve.json", {"points": curve_data(points)})
        fig = curve_figure(points)
        if fig is not None:
            fig.savefig(out / "curve.png")
        print(f"wrote {out / 'curve.md'}, {out / 'curve.json'}" + (f", {out / 'curve.png'}" if fig else ""),
              file=sys.stderr)
    if args.json:
        print(json.dumps({"points": curve_data(points)}))
    return 0


def _cmd_budget(args: argparse.Namespace) -> int:
    import json

    from vl2v.evaluation.budget import budget_data, budget_figure, budget_rows, budget_table, collect_budget

    budgets = sorted(set(args.budgets))
    if any(b <= 0 for b in budgets):
        raise CLIError(f"--budgets must be positive step counts, got {args.budgets}")
    rows = budget_rows(collect_budget(args.runs, budgets), args.tolerance)
    if not rows:
        raise CLIError(f"no fine-tuned runs reaching {budgets[0]} steps under {', '.join(args.runs)}: train them with "
                       f"`vl2v compare --steps {budgets[-1]} ...` (one long run gives every shorter budget)")
    text = ("Fine-tuning budget: one run per algorithm, target and seed at the longest budget; each shorter budget is "
            "its first N steps (constant learning rate, the same data stream), the checkpoint chosen by "
            "training-domain validation within them.\n\n" + budget_table(rows, args.tolerance))
    print(text)
    if args.out:
        from vl2v.utils.io import atomic_write_json, atomic_write_text

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "budget.md", text + "\n")
        atomic_write_json(out / "budget.json", {"tolerance": args.tolerance, "rows": budget_data(rows)})
        budget_figure(rows).savefig(out / "budget.png")
        print(f"wrote {out / 'budget.md'}, {out / 'budget.json'}, {out / 'budget.png'}", file=sys.stderr)
    if args.json:
        print(json.dumps({"tolerance": args.tolerance, "rows": budget_data(rows)}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    # report
    q = sub.add_parser("report", help="aggregate run directories into tables (mean +- SE over trials)",
                       description="Read run directories (or folders containing them) and print DomainBed-style "
                       "tables: OOD accuracy per target domain and average, ID accuracy, mean +- standard error "
                       "over trial seeds, with SWAD rows where present.")
    q.add_argument("runs", nargs="+", help="run directories or folders of runs")
    q.add_argument("--latex", action="store_true", help="also print LaTeX tables")
    q.add_argument("--out", help="write the report to this file instead of printing it")
    q.add_argument("--html", metavar="PATH", help="write the HTML report (figures embedded) to PATH (.html file or folder); "
                   "default: next to --out, else RUNS[0]/report.html")
    q.add_argument("--no-html", action="store_true", help="Markdown tables only, no HTML page")
    q.add_argument("--json", action="store_true", help="the tables (per algorithm and target: mean, SE and number of "
                   "trials, in %%) and teacher bills as JSON on stdout (or in --out), nothing else there; "
                   "no HTML page unless --html")
    q.set_defaults(func=_cmd_report)

    c = sub.add_parser("curve", help="the teacher-quality curve: student gain against the teacher's OOD zero-shot",
                       description="Read runs trained with the DIAGNOSTIC privileged teacher at several alpha "
                       "(`--teacher privileged --teacher-opt alpha=A`, one target and seed each) and baseline runs "
                       "of their base teacher (ERM-FT, ADiP lam=0, and the base teacher's zeroshot/adip/kd as "
                       "alpha = 0), and print per alpha the teacher's zero-shot on the target and the students' "
                       "gains (ADiP - ERM-FT, KD - ERM-FT, ADiP - ADiP(lam=0), SD - ERM-FT).")
    c.add_argument("runs", nargs="+", help="folders of runs with the privileged teacher")
    c.add_argument("--baseline", nargs="+", metavar="RUNS", help="runs of the base teacher on the same data, seeds "
                   "and budget (ERM-FT, adip:lam=0, zeroshot, adip, kd)")
    c.add_argument("--out", metavar="DIR", help="also write curve.md, curve.json and curve.png there")
    c.add_argument("--json", action="store_true", help="also print the points as JSON")
    c.set_defaults(func=_cmd_curve)

    b = sub.add_parser("budget", help="has the fine-tuning budget converged? source validation per budget",
                       description="Read runs trained with a long fine-tuning budget (`vl2v compare --steps 1024 ...`) "
                       "and print, per algorithm, the source-validation and out-of-domain accuracy of the checkpoint "
                       "training-domain validation picks within each shorter budget (the learning rate is constant, "
                       "so a run's first N steps are the N-step run), and from which budget every further doubling "
                       "moves source validation by less than --tolerance points.")
    b.add_argument("runs", nargs="+", help="run directories or folders of runs")
    b.add_argument("--budgets", nargs="+", type=int, default=[128, 256, 512, 1024], metavar="N",
                   help="fine-tuning step counts to read (default: 128 256 512 1024)")
    b.add_argument("--tolerance", type=float, default=0.5, metavar="POINTS",
                   help="a doubling that moves source validation by less than this is converged (default 0.5)")
    b.add_argument("--out", metavar="DIR", help="also write budget.md, budget.json and budget.png there")
    b.add_argument("--json", action="store_true", help="also print the rows as JSON")
    b.set_defaults(func=_cmd_budget)
