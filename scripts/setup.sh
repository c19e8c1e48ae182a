#!/usr/bin/env bash
# Create ./.venv (if missing) and install vl2v with its test extras into it.
#   bash scripts/setup.sh        # the package and its command, `.venv/bin/vl2v`
#   bash scripts/setup.sh test   # also Debian's Chromium, for the report-rendering test
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"
if [ "${1:-}" = "test" ]; then
    bash scripts/install_chromium.sh
fi
.venv/bin/vl2v --version
