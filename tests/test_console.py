"""The CLI's error line stays one line in a pipe, where rich would fold it at 80 columns."""

from __future__ import annotations

import io

from rich.console import Console

from services.console import print_error


def test_a_long_error_is_printed_on_one_line_with_its_markup_escaped() -> None:
    out = io.StringIO()
    console = Console(file=out, width=40, force_terminal=False)
    path = "/a/very/long/data/root/" + "nested/" * 12 + "judge.jsonl"
    print_error(console, f"evaluation.judge_data: {path} changed since the run was created [bold]x[/]")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0] == f"error: evaluation.judge_data: {path} changed since the run was created [bold]x[/]"
