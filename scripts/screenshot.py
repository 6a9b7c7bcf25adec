"""Screenshot an HTML report (or one section of it) in headless Chromium, to look at what a user sees.

Usage: .venv/bin/python scripts/screenshot.py runs/NAME/report.html out.png [CSS_SELECTOR]
e.g.   .venv/bin/python scripts/screenshot.py runs/demo/report.html roc.png "#roc"
Needs Debian's chromium (`make browser`) and the dev extra's playwright (no browser download).
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip


def main(html: str, out: str, selector: str | None = None) -> None:
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", chromium_sandbox=False, args=ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(Path(html).resolve().as_uri())
        if selector:
            page.locator(selector).screenshot(path=out)
        else:
            page.screenshot(path=out, full_page=True)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:4])
