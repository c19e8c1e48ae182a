"""`vl2v --version` answers without importing torch (the command modules are imported only to build the parser)."""

from __future__ import annotations

import json
import subprocess
import sys

from vl2v import __version__

# run the command line as `python -m vl2v --version` does, then report what it printed and whether torch got imported
PROBE = """
import contextlib, io, json, runpy, sys
sys.argv = ["vl2v", "--version"]
out = io.StringIO()
code = None
with contextlib.redirect_stdout(out):
    try:
        runpy.run_module("vl2v", run_name="__main__")
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"out": out.getvalue(), "code": code, "torch": "torch" in sys.modules}))
"""


def test_version_does_not_import_torch():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["out"].strip() == f"vl2v {__version__}"
    assert got["code"] in (0, None)
    assert got["torch"] is False


def test_python_m_vl2v_version():
    proc = subprocess.run([sys.executable, "-m", "vl2v", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"vl2v {__version__}"


def test_help_still_lists_every_command():
    from vl2v.cli import build_parser

    text = build_parser().format_help()
    for command in ("data", "train", "compare", "report", "list", "serve", "sweep", "embed", "export", "predict",
                    "teacher"):
        assert f"    {command} " in text or f"    {command}\n" in text, command
