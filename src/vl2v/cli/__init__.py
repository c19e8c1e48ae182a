"""The ``vl2v`` command line: one small module per command group, each with ``register(subparsers)``.

| command | module | calls |
|---|---|---|
| data list/download/build/check | :mod:`vl2v.cli.data` | :mod:`vl2v.data` |
| train, compare | :mod:`vl2v.cli.train` | :func:`vl2v.experiment.run.run_experiment` |
| report | :mod:`vl2v.cli.report` | :mod:`vl2v.evaluation.report`, ``html_report`` |
| list | :mod:`vl2v.cli.listing` | the registries |
| serve | :mod:`vl2v.cli.serve` | :mod:`vl2v.serving.service` |
| sweep | :mod:`vl2v.cli.sweep` | :mod:`vl2v.experiment.sweep` |
| embed | :mod:`vl2v.cli.embed` | :mod:`vl2v.teachers.precompute` |
| export, predict | :mod:`vl2v.cli.deploy` | :mod:`vl2v.serving.export`, ``predict`` |
| eval | :mod:`vl2v.cli.evaluate` | :mod:`vl2v.serving.evaluate` |
| teacher list/build (+ hidden, deprecated ``teachers``) | :mod:`vl2v.cli.teacher` | :mod:`vl2v.teachers.catalog`, ``lit_build`` |

Options are never abbreviated (``allow_abbrev=False``: ``--tar`` is an error,
not ``--target``). Every error a user can fix is a :class:`vl2v.errors.UserError`,
printed as one line with its exit code (2: bad input, 1: failed download,
3: teacher-query budget exhausted, 4: cannot write output; 130: interrupted).
"""

from __future__ import annotations

import argparse
import errno
import sys

from vl2v import __version__
from vl2v.cli.common import CLIError  # noqa: F401  (re-exported for callers)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command parser refuses abbreviated options."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="vl2v",
        description="Distil a vision-language model into a small, robust image classifier "
        "(VL2V-ADiP, VL2V-SD and baselines, with the DomainBed protocol).",
    )
    p.add_argument("--version", action="version", version=f"vl2v {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    # the command modules are imported here, not at import time: `vl2v --version` (main's fast path) then
    # answers without importing torch, which the command modules pull in
    from vl2v.cli import data, deploy, embed, evaluate, listing, report, serve, sweep, teacher, train

    for group in (data, train, report, listing, serve, sweep, embed, deploy, evaluate, teacher):
        group.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--version"]:  # fast path: before the command modules (and torch) are imported
        print(f"vl2v {__version__}")
        return 0
    from pydantic import ValidationError

    from vl2v.errors import UserError
    from vl2v.teachers.base import QueryBudgetExceeded

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except QueryBudgetExceeded as exc:
        print(f"vl2v: teacher query budget exhausted: {exc}; everything the teacher already answered is kept in "
              "the teacher store: raise the budget and run the same command again (finished runs are skipped, "
              "cached queries are not repeated)", file=sys.stderr)
        return 3
    except UserError as exc:
        print(f"vl2v: {exc.prefix}: {exc}", file=sys.stderr)
        return exc.exit_code
    except (FileNotFoundError, ValidationError) as exc:
        print(f"vl2v: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `vl2v report ... | head`: the reader left; say nothing more
        _silence_stdout()
        return 0
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM):
            raise
        where = f" {exc.filename}" if exc.filename else ""
        print(f"vl2v: error: cannot write{where}: {exc.strerror or exc}. Files written before were not touched "
              "(every checkpoint is written to a temporary file and renamed only when complete): the last good "
              "checkpoint is intact. Free space or fix permissions, then continue with `vl2v train --resume OUT`.",
              file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("vl2v: interrupted", file=sys.stderr)
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python flushes it again at exit, and a closed pipe would then print
    "Exception ignored ... BrokenPipeError" after we returned."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
