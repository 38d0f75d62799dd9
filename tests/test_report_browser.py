"""The HTML report in a real browser: Playwright driving the system's Chromium (never a downloaded one).

Asserts that opening the file makes no request but for the file itself and logs no console error, that
clicking a header sorts its table, that dark mode applies, and takes screenshots (light and dark)."""

from __future__ import annotations

import shutil

import pytest
from report_fixture import make_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no system Chromium (Debian: apt-get install chromium); "
                                                          ".ci/run installs it")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from blockmae.report.analysis import study_document
    from blockmae.report.model import load_studies
    from blockmae.report.write import write_document

    root = make_sweep(tmp_path_factory.mktemp("browser") / "sweep")
    out = root / "report.html"
    write_document(study_document(load_studies(root)), out, None, root / "report_tables")
    return out


def _column(page, table_id: str, col: int) -> list[str]:
    return page.eval_on_selector_all(f"#table-{table_id} tbody tr",
                                     f"rows => rows.map(r => r.cells[{col}].textContent.trim())")


def test_report_opens_offline_sorts_and_has_a_dark_mode(report, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the `test` extra")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            requests, errors = [], []
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            assert requests == [report.as_uri()], requests
            assert errors == []
            assert page.locator("figure svg").count() >= 8

            # Sorting: the mean column of linear.top1 by arm (b1 0.310, b2 0.415, b4 0.315).
            table = "linear-top1-by-arm"
            assert _column(page, table, 0) == ["b1", "b2", "b4"]
            header = page.locator(f"#table-{table} th", has_text="mean")
            header.click()
            assert _column(page, table, 0) == ["b1", "b4", "b2"]
            assert header.get_attribute("aria-sort") == "ascending"
            header.click()
            assert _column(page, table, 0) == ["b2", "b4", "b1"]
            # Empty cells sort last both ways: std of b4 (one seed) is '-'.
            std = page.locator(f"#table-{table} th", has_text="std")
            std.click()
            assert _column(page, table, 0)[-1] == "b4"
            std.click()
            assert _column(page, table, 0)[-1] == "b4"
            light_bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
            page.screenshot(path=str(tmp_path / "report_light.png"), full_page=True)

            dark = browser.new_page(color_scheme="dark", viewport={"width": 1200, "height": 900})
            dark.goto(report.as_uri())
            assert dark.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(21, 24, 28)"
            assert light_bg == "rgb(255, 255, 255)"
            assert "invert" in dark.evaluate("getComputedStyle(document.querySelector('figure svg')).filter")
            dark.screenshot(path=str(tmp_path / "report_dark.png"), full_page=True)
        finally:
            browser.close()
    for name in ("report_light.png", "report_dark.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
