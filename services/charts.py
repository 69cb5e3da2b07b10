"""The chart code the dashboard and the run report share, and how a page takes it in.

Why one copy: a chart in the report must read exactly like the same chart on the dashboard (axes,
one-point curves drawn as points, legends), and two implementations drift. The dashboard draws in
the browser from the API's JSON, so the shared code is JavaScript (``static/charts.js``, with its
styles in ``static/charts.css``). Neither page may load anything from elsewhere, so each page
*includes* the files' text into its one inline ``<script>``/``<style>`` block at a marker line::

    // @include charts.js          (in a script)
    /* @include charts.css */      (in a style block)

The included text is fixed (it never depends on a run), so each block's CSP hash is stable.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_MARKER = re.compile(
    r"^(?P<indent>[ \t]*)(?://|/\*)[ \t]*@include[ \t]+(?P<name>[\w.-]+)[ \t]*(?:\*/)?[ \t]*$", re.MULTILINE
)


@cache
def static_text(name: str) -> str:
    """A file of ``services/static`` (package data), read once."""
    return files("services").joinpath(f"static/{name}").read_text(encoding="utf-8")


def include_static(text: str) -> str:
    """``text`` with every ``@include NAME`` marker line replaced by ``static/NAME``, indented as the
    marker is. Included files may include others; a file that includes itself is an error."""
    return _include(text, ())


def _include(text: str, seen: tuple[str, ...]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name in seen:
            raise ValueError(f"static/{name} includes itself: {' -> '.join((*seen, name))}")
        body = _include(static_text(name), (*seen, name)).rstrip("\n")
        indent = match["indent"]
        return "\n".join(indent + line if line else line for line in body.split("\n"))

    return _MARKER.sub(replace, text)
