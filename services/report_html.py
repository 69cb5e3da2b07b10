"""``spar report --format html``: the report as one self-contained page.

Rendered tables (from the same blocks as the Markdown, :mod:`services.report_doc`), the comparison
and paired-difference tables first, each run's config collapsed, and charts drawn in the browser by
the dashboard's own chart code (``static/charts.js``, included in the page's one inline script):
a one-point curve shows its point, and a chart with no numbers is not drawn at all.

Nothing is loaded from elsewhere. The page's inline ``<style>`` and ``<script>`` are fixed text
(the numbers travel in a JSON data block that is never executed), so their CSP hashes are the same
for every report: the API serves the page with a policy allowing exactly those two blocks
(:func:`services.dashboard.report_csp`), and the dashboard, whose policy a ``blob:`` report
inherits, allows them too (:func:`services.dashboard.report_inline_hashes`).
"""

from __future__ import annotations

import html
from functools import cache

from .charts import include_static
from .report import RunReport, build_document
from .report_doc import Heading, json_data_block, to_html_body

CHART_DATA_ID = "report-charts"

_STYLE = """
:root { --fg:#1d2330; --muted:#667085; --line:#d0d5dd; --bg:#f7f8fa; --card:#fff; --accent:#2563eb;
        --bad:#b42318; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg);
       background:var(--bg); }
header { padding:12px 20px; background:#111827; color:#fff; }
header h1 { font-size:18px; margin:0; }
header p { margin:2px 0 0; color:#d0d5dd; }
main { max-width:1500px; margin:0 auto; padding:14px 20px; }
section.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 16px;
               margin-bottom:16px; overflow-wrap:anywhere; }
h2 { font-size:16px; margin:4px 0 8px; }
h3 { font-size:13px; margin:12px 0 4px; color:var(--muted); font-weight:600; }
p { margin:6px 0; }
p.note { color:var(--muted); font-size:12px; }
code { font:12px ui-monospace, SFMono-Regular, Menlo, monospace; background:#f2f4f7; padding:0 3px;
       border-radius:3px; }
div.scroll { max-width:100%; overflow-x:auto; }
table { border-collapse:collapse; font-size:13px; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:3px 6px; border-bottom:1px solid var(--line); overflow-wrap:break-word; }
th { color:var(--muted); font-weight:600; font-size:12px; white-space:normal; vertical-align:bottom; }
td.num { text-align:right; white-space:nowrap; }
td.flag { color:var(--bad); font-weight:600; }
details { margin:8px 0; }
details > summary { cursor:pointer; color:var(--muted); }
details pre { white-space:pre-wrap; overflow-wrap:anywhere; background:var(--bg); padding:8px;
              border:1px solid var(--line); border-radius:4px; font-size:12px; }
.charts { margin:8px 0; }
/* @include charts.css */
"""


@cache
def report_style() -> str:
    """The page's inline style: its own rules and the charts' (shared with the dashboard)."""
    return include_static(_STYLE)


@cache
def report_script() -> str:
    """The page's one script: the shared chart code and the few lines that feed it the data."""
    return "\n" + include_static("// @include report.js") + "\n"


def render_html(reports: list[RunReport]) -> str:
    """The report of ``reports`` as one HTML page (an empty list gives the bare page, whose inline
    blocks are every report's: :func:`services.dashboard.report_inline_hashes` reads them)."""
    charts: dict[str, list[dict]] = {}
    blocks = [b for b in build_document(reports) if not (isinstance(b, Heading) and b.level == 1)]
    body = to_html_body(blocks, charts)  # the page's header is its title
    runs = ", ".join(r.name() for r in reports) or "no runs"
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>spar report: {html.escape(runs)}</title><style>{report_style()}</style></head><body>"
        f"<header><h1>spar report</h1><p>{html.escape(runs)}</p></header><main>{body}</main>"
        "<noscript><p>The charts are drawn by a script; the tables above hold every number.</p></noscript>"
        f"{json_data_block(CHART_DATA_ID, charts)}<script>{report_script()}</script></body></html>"
    )
