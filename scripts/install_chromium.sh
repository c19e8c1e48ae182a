#!/usr/bin/env bash
# Install Debian's headless-capable Chromium (apt-get: chromium, fonts-dejavu-core) for the browser test
# (tests/test_html_report.py, marker `browser`). Playwright drives it through executable_path=/usr/bin/chromium:
# `playwright install` cannot download its own browsers here. `scripts/setup.sh test` calls this script.
# A no-op when a chromium binary is already on PATH (or at $VL2V_CHROMIUM). Needs root (or sudo)
# and the distribution's package archive; when neither works it says so and exits 0, and the
# browser tests then skip with that reason.
set -uo pipefail
for c in "${VL2V_CHROMIUM:-}" chromium chromium-browser google-chrome; do
    if [ -n "$c" ] && command -v "$c" >/dev/null 2>&1; then
        echo "chromium: $(command -v "$c") is present"
        exit 0
    fi
done
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
        echo "chromium: not installed and not root (no passwordless sudo); browser tests will skip" >&2
        exit 0
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: no apt-get on this system; install chromium yourself or set VL2V_CHROMIUM; browser tests will skip" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/tmp/vl2v-chromium-install.log 2>&1; then
    $SUDO apt-get update -q >>/tmp/vl2v-chromium-install.log 2>&1 || true
    if ! $SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >>/tmp/vl2v-chromium-install.log 2>&1; then
        echo "chromium: apt-get install chromium failed (log: /tmp/vl2v-chromium-install.log); browser tests will skip" >&2
        tail -5 /tmp/vl2v-chromium-install.log >&2
        exit 0
    fi
fi
echo "chromium: installed $(command -v chromium)"
