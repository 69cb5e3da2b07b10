"""The report as a list of blocks, rendered to Markdown or to an HTML page from the same blocks.

Why blocks: the HTML report used to be the Markdown text inside a ``<pre>``. Building the content
once as headings, paragraphs, tables, charts and collapsed details, and rendering each format from
it, keeps the two formats saying the same thing while the page gets real tables. Text in blocks is
plain text with two inline marks (```code``` and ``*emphasis*``); the HTML renderer escapes
everything before applying them, so run data never becomes markup.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from typing import Any

FLAG = "⚠"
"""Marks a cell that needs a reader's attention (e.g. a truncation share of 5% or more)."""


@dataclass
class Heading:
    level: int
    text: str
    id: str | None = None


@dataclass
class Text:
    text: str


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    id: str | None = None
    note: str | None = None


@dataclass
class Charts:
    """Line charts drawn by the shared chart code (``static/charts.js``): HTML only."""

    id: str
    charts: list[dict[str, Any]]
    """``lineChart`` options: {id, title, labels, series: [{name, values}], yMin, yMax, xTitle}."""


@dataclass
class Details:
    """Collapsed text (the config): ``<details>`` in both formats."""

    summary: str
    body: str
    language: str = "json"


@dataclass
class Section:
    """A group of blocks: a card on the page, nothing of its own in Markdown."""

    id: str
    blocks: list[Block] = field(default_factory=list)


Block = Heading | Text | Table | Charts | Details | Section


# --- Markdown ------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(t: Table) -> list[str]:
    if not t.rows:
        return []
    out = [f"### {t.title}", "", "| " + " | ".join(map(_md_cell, t.header)) + " |"]
    out.append("|" + "---|" * len(t.header))
    out += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in t.rows]
    return out + [""] + ([t.note, ""] if t.note else [])


def to_markdown(blocks: list[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown (what ``--format md`` writes and docs/results keep)."""
    return "\n".join(_md_lines(blocks))


def _md_lines(blocks: list[Block]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            out += [b.text, ""]
        elif isinstance(b, Table):
            out += _md_table(b)
        elif isinstance(b, Details):
            out += [f"<details><summary>{b.summary}</summary>", "", f"```{b.language}", b.body, "```"]
            out += ["", "</details>", ""]
        elif isinstance(b, Section):
            out += _md_lines(b.blocks)
    return out


# --- HTML ----------------------------------------------------------------------------------------

_CODE = re.compile(r"`([^`]+)`")
_EM = re.compile(r"\*([^*\s][^*]*?)\*")
_NUMERIC = re.compile(r"^(?:[-+]?\d|-$|p=|n=)")


def inline(text: str) -> str:
    """Escaped text with ```code``` and ``*emphasis*`` rendered (nothing else becomes markup)."""
    escaped = html.escape(text, quote=True)
    return _EM.sub(r"<em>\1</em>", _CODE.sub(r"<code>\1</code>", escaped))


def _attr(name: str, value: str | None) -> str:
    return f' {name}="{html.escape(value, quote=True)}"' if value else ""


def _cell(tag: str, text: str) -> str:
    classes = []
    if _NUMERIC.match(text):
        classes.append("num")
    if FLAG in text:
        classes.append("flag")
    return f"<{tag}{_attr('class', ' '.join(classes))}>{inline(text)}</{tag}>"


def _html_table(t: Table) -> str:
    if not t.rows:
        return ""
    head = "".join(f"<th>{inline(h)}</th>" for h in t.header)
    body = "".join("<tr>" + "".join(_cell("td", c) for c in row) + "</tr>" for row in t.rows)
    note = f"<p class='note'>{inline(t.note)}</p>" if t.note else ""
    return (
        f"<div class='table'{_attr('id', t.id)}><h3>{inline(t.title)}</h3>"
        f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"
        f"{note}</div>"
    )


def to_html_body(blocks: list[Block], charts: dict[str, list[dict[str, Any]]]) -> str:
    """The blocks as HTML; each :class:`Charts` block becomes an empty container whose charts are
    added to ``charts`` (container id -> chart options) for the page's script to draw."""
    parts: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}{_attr('id', b.id)}>{inline(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            parts.append(f"<p>{inline(b.text)}</p>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, Charts) and b.charts:
            charts[b.id] = b.charts
            parts.append(f"<div class='charts'{_attr('id', b.id)}></div>")
        elif isinstance(b, Details):
            parts.append(
                f"<details><summary>{html.escape(b.summary)}</summary>"
                f"<pre>{html.escape(b.body)}</pre></details>"
            )
        elif isinstance(b, Section):
            parts.append(
                f"<section class='card'{_attr('id', b.id)}>{to_html_body(b.blocks, charts)}</section>"
            )
    return "".join(parts)


def json_data_block(element_id: str, data: object) -> str:
    """A ``<script type="application/json">`` block: data a script reads, never executed itself.

    ``<``, ``>`` and ``&`` are written as JSON escapes, so no text in the data can close the block.
    """
    text = json.dumps(data, ensure_ascii=False, allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{html.escape(element_id)}">{text}</script>'
