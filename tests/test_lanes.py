"""The test lanes table (``LANES`` in tests/conftest.py) names only tests that exist.

A key that matches no collected test (a renamed or deleted test, a typo) would silently leave that test in
the wrong lane, or mark nothing at all; this collects the whole suite in a subprocess (``pytest
--collect-only -q``) and checks every key against the collected node ids, with the same key rules the
lanes are applied by (conftest's ``_lane_keys``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from conftest import LANES, _lane_keys

TESTS = Path(__file__).resolve().parent


def collected_node_ids() -> list[str]:
    """The node ids of every test pytest collects under tests/ (``tests/test_x.py::test_y[p]``)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-o", "addopts=", str(TESTS)], cwd=TESTS.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"collection failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    return [line.strip() for line in proc.stdout.splitlines() if "::" in line and not line.startswith(" ")]


def lane_keys_of(nodeid: str) -> list[str]:
    """The LANES keys that can name the test ``nodeid`` (conftest's rules, applied to a collected node id)."""
    return _lane_keys(SimpleNamespace(fspath=TESTS.parent / nodeid.split("::", 1)[0], nodeid=nodeid))


def test_lane_keys_of_a_node_id():
    assert lane_keys_of("tests/test_x.py::test_y[a-b]") == ["test_x.py", "test_x.py::test_y", "test_x.py::test_y[a-b]"]


def test_every_lane_key_names_a_collected_test():
    ids = collected_node_ids()
    assert any(i.endswith("::test_every_lane_key_names_a_collected_test") for i in ids), ids[:5]
    named = {key for nodeid in ids for key in lane_keys_of(nodeid)}
    stale = sorted(k for k in LANES if k not in named)
    assert not stale, ("LANES keys in tests/conftest.py that name no collected test (renamed or removed? fix or "
                       f"drop them): {stale}")
