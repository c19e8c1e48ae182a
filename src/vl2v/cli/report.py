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
