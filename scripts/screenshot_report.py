"""Screenshot an HTML report (docs/report_screenshot.png) in Debian's headless Chromium via Playwright.

    .venv/bin/python scripts/screenshot_report.py runs/main/report.html docs/report_screenshot.png

The page is served from a local folder by file URL; the shot is the top of the page at 1280 px wide.
"""

from __future__ import annotations

import sys
from pathlib import Path

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main(report: str, out: str, height: int = 1800) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": height})
        page.goto(Path(report).resolve().as_uri())
        page.wait_for_load_state("networkidle")
        page.screenshot(path=out, full_page=False)
        browser.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
