"""The HTML report in a real headless Chromium, served with the API's CSP for it.

What only a browser shows: that the tables are rendered tables and the paired differences are on
the first screen, that nothing is wider than the window, that the charts are drawn (by the
dashboard's chart code, allowed by the policy's hash: a wrong hash draws nothing) with a visible
point for a one-point curve and no empty boxes, and that the config is collapsed. Chromium as in
tests/test_dashboard.py: a missing browser fails with the fix, it never skips.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from report_fixtures import FakeRun, outcomes, prompts_file, write_run
from test_dashboard import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, need_chromium

from services.dashboard import report_csp
from services.report import load_run
from services.report_html import render_html

HOSTILE = "v1</script><i>x"
"""A version name from a tampered manifest: it reaches the tables and the charts' JSON data block,
which it would end early if it were not escaped there (the charts would not be drawn)."""
URL = "http://report.test/"


def fabricated(tmp: Path) -> list[Path]:
    prompts = prompts_file(tmp)
    v0, v1, v2 = (outcomes([i < k for i in range(30)], 2) for k in (6, 12, 15))
    judge = {
        "v0": [("fail", "fail")] * 8 + [("pass", "fail")] * 2,
        "v1": [("pass", "fail")] * 6 + [("pass", "pass")] * 4,
    }
    runs = [
        FakeRun("run-a", "main", {"v0": v0, "v1": v1, "v2": v2}, judge=judge, capped_share={"v1": 0.1}),
        FakeRun("run-b", "samples", {"v0": v0, HOSTILE: v2}, judge=judge),  # one iteration: one-point curves
    ]
    return [write_run(tmp / "runs", r, prompts) for r in runs]


def test_the_html_report_is_a_real_page(tmp_path: Path) -> None:
    need_chromium()
    from playwright.sync_api import sync_playwright

    reports = [load_run(d) for d in fabricated(tmp_path)]
    page_html = render_html(reports)
    data = json.loads(
        re.search(r'<script type="application/json" id="report-charts">(.*?)</script>', page_html).group(1)
    )
    specs = [c for charts in data.values() for c in charts]
    one_point = [c for c in specs if len(c["labels"]) == 1]
    assert specs and one_point  # the one-iteration run's counts are single points

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.on(
                "console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None
            )
            headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": report_csp()}
            page.route(URL, lambda route: route.fulfill(status=200, headers=headers, body=page_html))
            page.goto(URL)
            page.wait_for_selector("html[data-charts='drawn']", timeout=10_000)

            # the paired differences are a rendered table on the first screen, after the comparison
            paired = page.locator("#paired table")
            assert paired.locator("tbody tr").count() == sum(len(r.comparisons["ifeval"]) for r in reports)
            box = page.locator("#paired").bounding_box()
            assert box is not None and box["y"] < 900
            assert page.locator("#comparison").bounding_box()["y"] < box["y"]
            assert "<pre>|" not in page.content() and page.locator("td", has_text="v2 - v1").count() == 1

            # nothing wider than the window, and no table wider than its box
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            overflowing = page.evaluate(
                "[...document.querySelectorAll('div.scroll, section, table')]"
                ".filter(e => e.scrollWidth > e.parentElement.clientWidth + 1)"
                ".map(e => e.outerHTML.slice(0, 300))"
            )
            assert overflowing == []

            # every chart drawn by the shared code with the report's numbers; a point for each value
            charts = page.locator("svg.chart")
            assert charts.count() == len(specs)
            for spec in specs:
                chart = page.locator(f"svg#{spec['id']}")
                assert json.loads(chart.get_attribute("data-values")) == spec["series"][0]["values"]
                points = sum(v is not None for s in spec["series"] for v in s["values"])
                assert chart.locator("circle").count() == points, spec["id"]
            assert page.locator("svg.chart text", has_text="no data").count() == 0

            # the config is collapsed; the flag for 10% truncation is marked
            details = page.locator("details")
            assert details.count() == len(reports)
            assert all(details.nth(k).get_attribute("open") is None for k in range(details.count()))
            assert not page.locator("details pre").first.is_visible()
            assert page.locator("td.flag", has_text="3/30 (10.0%)").count() == 1

            # a hostile version name stays text: one executable script, no element made of it
            assert page.evaluate("document.querySelectorAll('script:not([type])').length") == 1
            assert page.locator("td", has_text=HOSTILE).count() >= 1 and page.locator("i").count() == 0
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
            assert problems == []
        finally:
            browser.close()
