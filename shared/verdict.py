"""Turning a refiner's judgment text into a label.

The reference implementation tests ``"Yes" in text``, which counts "Not", "None" or "Note" and any
earlier mention of the format as a verdict. The rule here (docs/method.md): take the text after the LAST
"Final Judgement" (case-insensitive, "Final Judgment" too); the verdict is the first whole word
"yes" or "no" in it; anything else is invalid.
"""

from __future__ import annotations

import re
from enum import IntEnum


class Verdict(IntEnum):
    """A judgment's label: the Output follows the Prompt (PASS), does not (FAIL), or unreadable."""

    PASS = 1
    FAIL = 0
    INVALID = -1


_MARKER = re.compile(r"final\s+judge?ment", re.IGNORECASE)
_ANSWER = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> Verdict:
    """The label of one judgment text, following the robust rule above."""
    markers = list(_MARKER.finditer(text))
    if not markers:
        return Verdict.INVALID
    answer = _ANSWER.search(text, markers[-1].end())
    if answer is None:
        return Verdict.INVALID
    return Verdict.PASS if answer.group(1).lower() == "yes" else Verdict.FAIL
