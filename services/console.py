"""Where the CLI's tables go: a terminal keeps its own width; a pipe or a CI log gets a wide one.

rich falls back to 80 columns when stdout is not a terminal, which folds the summary tables
(``train_ac…``) exactly where users read them most: in job logs and ``| tee`` output.
"""

from __future__ import annotations

import os
from typing import Any

PIPE_WIDTH = 140


def report_console(**kwargs: Any) -> Any:
    """A rich Console for results; ``COLUMNS`` still wins when set."""
    from rich.console import Console

    console = Console(**kwargs)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPE_WIDTH
    return console


def print_error(console: Any, message: str) -> None:
    """One ``error:`` line, never folded: users grep logs for the sentence and the path in it.

    rich wraps at the console width (80 columns in a pipe), which would split a long data path
    or "changed since the run was created" across lines.
    """
    from rich.markup import escape

    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
