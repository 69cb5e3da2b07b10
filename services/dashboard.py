"""A read-only web dashboard for runs, served by the API itself at ``GET /``.

Why a single static page: the service runs on clusters that may have no outbound network and no
frontend build tooling, so the page is one HTML file (``services/static/dashboard.html``, shipped
as package data) with inline CSS and JS and no third-party library. Charts are small SVG line
charts drawn by our own function (polyline, axes, labels), in ``static/charts.js``: the run report
draws its charts with the same file, and both pages include its text in their inline script
(:mod:`services.charts`).

The page needs no token to load; it asks for the API token once (kept in ``localStorage``; a
``#token=...`` URL fragment is accepted for automation and then removed from the address bar) and
calls the authenticated ``/v1`` routes with ``Authorization: Bearer <token>``. A fragment never
reaches the server, so the token does not end up in access logs. The page is served with a
Content-Security-Policy that allows its inline script and style by hash only and network calls to
its own origin only (see :func:`content_security_policy`): the token in ``localStorage`` is worth
protecting from injected script. Styles are set through the CSSOM (``node.style``), which the
policy allows, never through ``style`` attributes, which it does not.

Data it reads from ``GET /v1/runs/{id}``:

* ``progress``: rows ``{iteration, stage, done, total, complete}`` -> the stage timeline;
* ``iterations[t].metrics``: negatives, success_rate, mean_expansions_per_tree, pairs, ... ->
  the counts table and one chart per count across iterations;
* ``iterations[t].training``: rows with ``loss_curve`` (a list of per-step losses, when the
  summary provides it) or else ``first_loss``/``last_loss`` -> one loss chart per training stage;
* ``iterations[t].evaluation`` (written by the ``eval`` stage; empty lists until it runs)::

      {"ifeval": [{"version": "v0", "prompt_strict": 0.31, "instruction_strict": 0.42,
                   "prompt_loose": 0.35, "instruction_loose": 0.46, "average": 0.385,
                   "n_prompts": 50}, {"version": "v1", ...}],
       "judge":  [{"version": "v0", "accuracy": 0.62, "invalid_rate": 0.0, ...}, ...]}

  One row per evaluated model version (iteration 0 holds v0 and v1, iteration t holds v{t+1});
  the charts put versions on the x axis in order of appearance, a version seen twice keeps its
  latest row, and fractions are in [0, 1]. A single object instead of a list is accepted too.
  Nothing there renders "no evaluations yet" rather than an error.

Per run, the runs list offers the run's report (``GET /v1/runs/{id}/report``, the page ``spar
report`` writes): a plain link cannot send the token, so the page fetches the report with the
header and opens it as a ``blob:`` URL in a new tab, or saves the Markdown (``?format=md``) as a
file. A ``blob:`` document inherits the policy of the page that made it, so this page's CSP also
allows the report's own inline ``<style>`` and its one inline ``<script>`` (the shared chart code,
which reads the report's numbers from a JSON data block) by hash (:func:`report_inline_hashes`):
no other script in a report would run under this policy.

Below the run, "Inspect iteration" browses one iteration's refinement trees
(``GET /v1/runs/{id}/iterations/{t}/trees``, a page at a time, filtered by status) and DPO pairs
(``.../pairs/sample``). A tree shows its root (the negative and its judgment) and every
refinement, indented by depth, with votes and value; the nodes on the path to the success are
highlighted. That panel is not rebuilt by the periodic refresh, so what a user is reading stays
put. Tree rows carry ``data-key``/``data-status``; each node ``data-node-id``, ``data-parent``,
``data-depth``, ``data-value`` and ``data-on-path``, for browser tests.

Every chart is an ``<svg>`` with a stable id (``chart-negatives``, ``chart-success-rate``,
``chart-expansions``, ``chart-pairs``, ``chart-loss-<t>-<stage>``, ``chart-ifeval``,
``chart-judge``) and a ``data-values`` attribute holding the first plotted series as JSON
(``data-series`` holds every series by name), so browser tests can compare them with the API.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from .charts import include_static
from .report_html import render_html

router = APIRouter()

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def inline_hashes(html: str) -> dict[str, list[str]]:
    """The CSP source (``'sha256-...'``) of each inline ``<script>`` and ``<style>`` block of ``html``."""
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    return hashes


def content_security_policy(
    html: str,
    *,
    connect: str = "'self'",
    extra_styles: Iterable[str] = (),
    extra_scripts: Iterable[str] = (),
) -> str:
    """A strict CSP for a page whose only code is its inline ``<script>``/``<style>`` blocks.

    Each block is allowed by its SHA-256 hash (no ``'unsafe-inline'``): anything injected into the
    page -- another script, an event-handler attribute, a script from elsewhere -- does not run, and
    the page may only talk to its own origin (``connect-src``), where the token is sent.
    ``extra_styles``/``extra_scripts``: hashes of the blocks of documents the page opens as
    ``blob:`` URLs (they inherit this policy), i.e. the run report's.
    """
    hashes = inline_hashes(html)
    styles = hashes["style"] + [h for h in extra_styles if h not in hashes["style"]]
    scripts = hashes["script"] + [h for h in extra_scripts if h not in hashes["script"]]
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(scripts) or "'none'"),
            "style-src " + (" ".join(styles) or "'none'"),
            f"connect-src {connect}",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@cache
def report_inline_hashes() -> dict[str, tuple[str, ...]]:
    """Hashes of the run report's inline style and script (:func:`services.report_html.render_html`),
    taken from the renderer itself so that a restyled report stays allowed. Both blocks are fixed
    text (the numbers travel in a JSON data block, which is never executed), so the hashes of an
    empty report are every report's; any other script would not run, which is what the token in
    ``localStorage`` needs."""
    hashes = inline_hashes(render_html([]))
    return {"style": tuple(hashes["style"]), "script": tuple(hashes["script"])}


def report_style_hashes() -> tuple[str, ...]:
    """The report's inline style hashes (see :func:`report_inline_hashes`)."""
    return report_inline_hashes()["style"]


def report_script_hashes() -> tuple[str, ...]:
    """The report's inline script hash: the shared chart code (see :func:`report_inline_hashes`)."""
    return report_inline_hashes()["script"]


def report_csp() -> str:
    """The policy the API serves the report with: its own style and chart script by hash, nothing
    else (no request, no other script), so text from a run never becomes code or a request."""
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(report_script_hashes()) or "'none'"),
            "style-src " + (" ".join(report_style_hashes()) or "'none'"),
            "img-src data:",
            "base-uri 'none'",
            "form-action 'none'",
        ]
    )


@cache
def dashboard_html() -> str:
    """The page, read once from the package (it never changes while the server runs)."""
    return include_static(files("services").joinpath("static/dashboard.html").read_text(encoding="utf-8"))


@cache
def dashboard_headers() -> dict[str, str]:
    csp = content_security_policy(
        dashboard_html(), extra_styles=report_style_hashes(), extra_scripts=report_script_hashes()
    )
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    """Served without auth: the page holds no data, only the code that fetches it from the
    token-protected ``/v1`` routes. Its CSP allows only its own inline code (by hash)."""
    return HTMLResponse(dashboard_html(), headers=dashboard_headers())
