"""x' written by program for prompts with IFEval metadata, checked by IFEval's checker."""

import pytest

import shared.evaluation.iopo_rewrite as iopo_rewrite
from shared.evaluation.iopo_rewrite import VerifiableRewriter
from shared.iopo import PairForGroup
from shared.judges.verifier import check_response

TASK = "Write a FAQ about tea."
WORDS_40 = "Answer with at least 40 words."
NO_COMMA = "In your entire response, refrain from the use of any commas."
SHORT = "Tea is a drink made from leaves and it is calm and warm"  # 13 words, no comma
LONG = " ".join(["Tea grows on hills and people drink it warm"] * 7)  # 63 words, no comma


def words_meta(relation: str = "at least", n: int = 40) -> dict:
    return {
        "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"num_words": n, "relation": relation}],
    }


def rewrite(prompt: str, meta: dict | None, chosen: str, rejected: str, candidate: int = 0, seed: int = 0):
    table = {} if meta is None else {prompt: meta}
    rewriter = VerifiableRewriter(table, seed=seed)
    x2 = rewriter(PairForGroup("t0", prompt, chosen, rejected, ""), candidate)
    return x2, table


def test_a_violated_length_is_redrawn_so_the_negative_follows_and_the_refinement_does_not() -> None:
    x = f"{TASK} {WORDS_40}"
    x2, table = rewrite(x, words_meta(), chosen=LONG, rejected=SHORT)
    assert x2 is not None and x2.startswith(TASK) and WORDS_40 not in x2
    meta = table[x2]  # recorded for the stage's verifier
    assert meta["instruction_id_list"] == ["length_constraints:number_words"]
    kwargs = meta["kwargs"][0]
    assert kwargs["relation"] == "less than" and 13 < kwargs["num_words"] <= 63
    assert f"less than {kwargs['num_words']} words" in x2
    assert all(check_response(x2, SHORT, meta))
    assert not all(check_response(x2, LONG, meta))
    # deterministic per (seed, pair, candidate)
    assert rewrite(x, words_meta(), chosen=LONG, rejected=SHORT)[0] == x2


def test_a_constraint_with_nothing_to_redraw_is_removed_and_one_the_refinement_misses_is_added() -> None:
    x = f"{TASK} {NO_COMMA}"
    meta = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
    rejected, chosen = "Tea, milk, and honey.", "Tea with milk and honey is nice"
    x2, table = rewrite(x, meta, chosen=chosen, rejected=rejected)
    assert x2 is not None and NO_COMMA not in x2 and x2.startswith(TASK)
    new = table[x2]
    assert "punctuation:no_comma" not in new["instruction_id_list"] and len(new["instruction_id_list"]) == 1
    assert all(check_response(x2, rejected, new)) and not all(check_response(x2, chosen, new))


def test_constraints_the_negative_follows_are_kept_verbatim() -> None:
    x = f"{TASK} {NO_COMMA} {WORDS_40}"
    meta = {
        "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
        "kwargs": [{}, {"num_words": 40, "relation": "at least"}],
    }
    x2, table = rewrite(x, meta, chosen=LONG, rejected=SHORT)
    assert x2 is not None and NO_COMMA in x2
    assert table[x2]["instruction_id_list"][0] == "punctuation:no_comma" and table[x2]["kwargs"][0] == {}


@pytest.mark.parametrize(
    "prompt,meta",
    [
        (f"{TASK} {WORDS_40}", None),  # no metadata
        (f"{TASK} Please write forty words or more.", words_meta()),  # not the registry's wording
        (
            f"{TASK} {WORDS_40} First repeat the request word for word without change.",
            {"instruction_id_list": ["combination:repeat_prompt"], "kwargs": [{"prompt_to_repeat": TASK}]},
        ),
    ],
    ids=["no-metadata", "hand-written", "repeat-prompt"],
)
def test_prompts_it_cannot_rewrite_are_left_to_the_refiner(prompt: str, meta: dict | None) -> None:
    assert rewrite(prompt, meta, chosen=LONG, rejected=SHORT)[0] is None


def test_no_rewrite_when_both_responses_are_equal_under_every_variant() -> None:
    # the same text as negative and refinement: nothing separates them
    assert rewrite(f"{TASK} {WORDS_40}", words_meta(), chosen=SHORT, rejected=SHORT)[0] is None


def test_an_x2_that_would_contain_an_ifeval_prompt_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(iopo_rewrite, "collides_with_ifeval", lambda text: True)
    assert rewrite(f"{TASK} {WORDS_40}", words_meta(), chosen=LONG, rejected=SHORT)[0] is None


def test_a_hopeless_pair_stops_at_the_checker_budget(monkeypatch) -> None:
    calls = []
    real = iopo_rewrite._follows
    monkeypatch.setattr(iopo_rewrite, "_follows", lambda *a: calls.append(1) or real(*a))
    x = f"{TASK} {WORDS_40}"
    rewriter = VerifiableRewriter({x: words_meta()}, seed=0, max_checks=25)
    assert rewriter(PairForGroup("t0", x, SHORT, SHORT, ""), 0) is None  # nothing separates them
    assert len(calls) == 25
