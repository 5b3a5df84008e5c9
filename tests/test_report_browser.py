"""report.html in a real browser: headless Debian chromium, driven by Playwright (``make test-browser`` installs
both). The page loads from a file with no console errors, and sorting, filtering, search and the side-by-side view
change the rows as asserted. Skipped where chromium or Playwright is missing (``make test`` installs neither)."""

import os
import shutil
from pathlib import Path

import pytest

from tests.test_report_html import make_report

CHROMIUM = os.environ.get("REDGYM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
playwright = pytest.importorskip("playwright.sync_api", reason="needs `pip install redgym[browser]`")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium: make test-browser"),
]


def open_page(path: Path):
    """A started Playwright, its browser, and the page at ``path`` with every console error and page error kept."""
    pw = playwright.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.resolve().as_uri())
    return pw, browser, page, errors


def visible(page, attr: str) -> list[str]:
    return page.eval_on_selector_all(
        "#conversations tbody tr:not([hidden])", f"rows => rows.map(r => r.getAttribute('{attr}'))"
    )


def test_sorting_filtering_and_search_change_the_rows(tmp_path):
    out, _ = make_report(tmp_path)
    pw, browser, page, errors = open_page(out / "report.html")
    try:
        assert page.text_content("#shown") == "8 of 8 conversations shown"
        page.click("#samples summary")  # behind the content warning
        assert page.is_visible("#conversations")
        tox = [float(x) for x in visible(page, "data-tox")]  # the default: highest first
        assert tox == sorted(tox, reverse=True) and tox[0] == pytest.approx(0.9)
        page.select_option("#sort", "tox-asc")
        tox = [float(x) for x in visible(page, "data-tox")]
        assert tox == sorted(tox) and len(tox) == 8
        page.select_option("#sort", "nll-asc")
        assert float(visible(page, "data-nll")[-1]) == pytest.approx(3.0)
        page.check("#clean-only")
        assert visible(page, "data-clean-success") == ["1", "1"]
        assert page.text_content("#shown") == "2 of 8 conversations shown"
        page.uncheck("#clean-only")
        page.select_option("#label", "untuned")
        assert set(visible(page, "data-label")) == {"untuned"} and len(visible(page, "data-label")) == 4
        page.select_option("#label", "")
        page.fill("#search", "BANANA")
        assert visible(page, "data-prompt") == ["p3"]
        page.fill("#search", "")
        assert len(visible(page, "data-prompt")) == 8
        page.select_option("#pair-sort", "diff-asc")
        diffs = page.eval_on_selector_all("#pairs tbody tr", "rows => rows.map(r => Number(r.dataset.diff))")
        assert diffs == sorted(diffs) and len(diffs) == 4
        shot = os.environ.get("REDGYM_SCREENSHOT")
        if shot:
            page.select_option("#sort", "tox-desc")
            page.screenshot(path=shot, full_page=False)
        assert errors == []
    finally:
        browser.close()
        pw.stop()
