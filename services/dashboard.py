"""A read-only web dashboard for runs, served by the API itself at ``GET /``.

Why a single static page: the service runs on clusters that may have no outbound network and no
frontend build tooling, so the page is one HTML file (``services/static/dashboard.html``, shipped
as package data) with inline CSS and JS and no third-party library. Charts are small SVG line
charts drawn by our own function (polyline, axes, labels).

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

Every chart is an ``<svg>`` with a stable id (``chart-negatives``, ``chart-success-rate``,
``chart-expansions``, ``chart-pairs``, ``chart-loss-<t>-<stage>``, ``chart-ifeval``,
``chart-judge``) and a ``data-values`` attribute holding the first plotted series as JSON
(``data-series`` holds every series by name), so browser tests can compare them with the API.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter()

_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def content_security_policy(html: str, *, connect: str = "'self'") -> str:
    """A strict CSP for a page whose only code is its inline ``<script>``/``<style>`` blocks.

    Each block is allowed by its SHA-256 hash (no ``'unsafe-inline'``): anything injected into the
    page -- another script, an event-handler attribute, a script from elsewhere -- does not run, and
    the page may only talk to its own origin (``connect-src``), where the token is sent.
    """
    hashes: dict[str, list[str]] = {"script": [], "style": []}
    for kind, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        hashes[kind].append(f"'sha256-{digest}'")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + (" ".join(hashes["script"]) or "'none'"),
            "style-src " + (" ".join(hashes["style"]) or "'none'"),
            f"connect-src {connect}",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


@cache
def dashboard_html() -> str:
    """The page, read once from the package (it never changes while the server runs)."""
    return files("services").joinpath("static/dashboard.html").read_text(encoding="utf-8")


@cache
def dashboard_headers() -> dict[str, str]:
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": content_security_policy(dashboard_html()),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def dashboard() -> HTMLResponse:
    """Served without auth: the page holds no data, only the code that fetches it from the
    token-protected ``/v1`` routes. Its CSP allows only its own inline code (by hash)."""
    return HTMLResponse(dashboard_html(), headers=dashboard_headers())
