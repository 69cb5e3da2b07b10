"""parse_verdict: the last 'Final Judgement' marker, then the first whole word yes/no."""

import pytest

from shared.verdict import Verdict, parse_verdict

J = "Final Judgement (if the Output accurately follows the Prompt): "


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (J + "Yes", Verdict.PASS),
        (J + "No", Verdict.FAIL),
        (J + "yes.", Verdict.PASS),
        (J + "NO!", Verdict.FAIL),
        ("final judgement: no", Verdict.FAIL),
        ("Final Judgment: Yes", Verdict.PASS),  # American spelling accepted
        ("FINAL  JUDGEMENT:\nYes", Verdict.PASS),
        # "Not", "None", "Note" are not "no"; the first whole word decides
        (J + "Not entirely. Yes", Verdict.PASS),
        (J + "None of the constraints fail, so: Yes", Verdict.PASS),
        (J + "Note that the output is fine.", Verdict.INVALID),
        (J + "Nope", Verdict.INVALID),
        (J + "Yesterday", Verdict.INVALID),
        # both words: the first one wins
        (J + "Yes or No: No", Verdict.PASS),
        (J + "No, not Yes", Verdict.FAIL),
        # several markers: the LAST one decides, earlier text is ignored
        ("Final Judgement: Yes\n...on reflection...\nFinal Judgement: No", Verdict.FAIL),
        ("The answer would be Yes. Final Judgement: No", Verdict.FAIL),
        ("Final Judgement: No. Revised Final Judgement: Yes", Verdict.PASS),
        # no marker, or no word after the last marker
        ("Yes", Verdict.INVALID),
        ("The output follows the prompt. No problems.", Verdict.INVALID),
        ("", Verdict.INVALID),
        ("Final Judgement: Yes. Final Judgement:", Verdict.INVALID),
        ("Judgement: Yes", Verdict.INVALID),
        ("Final Judge: Yes", Verdict.INVALID),
    ],
)
def test_parse_verdict(text: str, expected: Verdict) -> None:
    assert parse_verdict(text) is expected


def test_verdict_values_match_the_spec() -> None:
    assert (Verdict.PASS, Verdict.FAIL, Verdict.INVALID) == (1, 0, -1)
