"""Reading the refined response out of a refiner reply: the markers, the last answer, cut-off replies."""

import pytest

from shared.templates import extract_refined


@pytest.mark.parametrize(
    ("text", "strict", "lenient"),
    [
        ("Final Refined Output: [[start]] fixed [[end]]", "fixed", "fixed"),
        # the format quoted first, then the answer: the last [[start]] wins
        ("Use [[start]] <x> [[end]]. Final Refined Output: [[start]] real [[end]]", "real", "real"),
        # a stray [[start]] inside: the text after the last one
        ("[[start]] draft [[start]] final [[end]]", "final", "final"),
        # cut off by the token limit: kept only when unterminated answers are accepted
        ("Final Refined Output: [[start]]  partly written\n", None, "partly written"),
        ("earlier [[start]] a [[end]] then [[start]] b is cut", None, "b is cut"),
        ("no markers at all", None, None),
        ("only an end [[end]]", None, None),
        ("[[start]]   [[end]]", None, None),
        ("[[start]]   ", None, None),
    ],
)
def test_extract_refined(text: str, strict: str | None, lenient: str | None) -> None:
    assert extract_refined(text) == strict
    assert extract_refined(text, accept_unterminated=True) == lenient
