#!/usr/bin/env bash
# Create ./.venv (if missing) and install vl2v with every optional extra into it.
#   bash scripts/setup.sh        # the package, all its extras ('.[all]') and its command, `.venv/bin/vl2v`
#   bash scripts/setup.sh test   # also the test tools ('.[all,test]') and Debian's Chromium for the browser test
# Idempotent: a second run only re-checks the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "${1:-}" = "test" ]; then
    .venv/bin/python -m pip install --quiet -e ".[all,test]"
    bash scripts/install_chromium.sh
else
    .venv/bin/python -m pip install --quiet -e ".[all]"
fi
.venv/bin/vl2v --version
