"""The programmatic verifier judge, the run judges' routing by backend, and synthesized checkable prompts.

Everything runs IFEval's real checker (no model): the verifier must agree with the checker, write
text that ``parse_verdict`` reads to the same label, and the synthesized prompts must be checkable,
balanced, reproducible and disjoint from IFEval's evaluation prompts.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pytest
from scripted import ScriptedEngine, no, yes

from services.prompts_cli import add_prompts_commands, run_prompts_command
from shared.evaluation.ifeval import load_ifeval_prompts, score_responses
from shared.evaluation.synth import instruction_types, synthesize
from shared.judges import LlmJudge, VerifierOnlyJudge, VerifierThenLlmJudge
from shared.judges.verifier import VerifierJudge
from shared.judging import Judge
from shared.verdict import Verdict, parse_verdict

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def item() -> dict:
    """IFEval key 1000: no commas, at least 3 highlighted sections, at least 300 words."""
    (first,) = load_ifeval_prompts(limit=1)
    assert first["instruction_id_list"] == [
        "punctuation:no_comma",
        "detectable_format:number_highlighted_sections",
        "length_constraints:number_words",
    ]
    return first


PASSING = "*Early life* *Crusades* *Legacy* " + " ".join(["Raymond ruled Tripoli well."] * 80)
FAILING = "Raymond, Count of Tripoli, was a nobleman."


def meta(record: dict) -> dict:
    return {"instruction_id_list": record["instruction_id_list"], "kwargs": record["kwargs"]}


def test_verifier_passes_and_fails_like_the_checker(item: dict) -> None:
    judgments = VerifierJudge().judge(
        [(item["prompt"], PASSING), (item["prompt"], FAILING)], [meta(item)] * 2
    )
    good, bad = judgments
    assert good is not None and bad is not None
    assert good.label is Verdict.PASS and bad.label is Verdict.FAIL
    for judgment in judgments:
        assert judgment.vote.labels == (judgment.label,) and judgment.vote.kept_index == 0
        assert judgment.kept == judgment.texts[0]
        assert judgment.kept.startswith("Step-by-step verification:")
        assert parse_verdict(judgment.kept) is judgment.label
    assert good.kept.endswith("Yes") and bad.kept.endswith("No")
    assert "punctuation:no_comma" in bad.kept and "NOT met" in bad.kept
    # The checker itself agrees on the same pair.
    records = score_responses([item, item], [PASSING, FAILING])["records"]
    assert all(records[0]["strict"]) and not all(records[1]["strict"])


def test_verifier_returns_none_without_metadata(item: dict) -> None:
    out = VerifierJudge().judge(
        [("Tell a joke.", "Ha."), (item["prompt"], PASSING)], [{"category": "x"}, meta(item)]
    )
    assert out[0] is None and out[1] is not None


def test_verifier_then_llm_routes_by_metadata(item: dict) -> None:
    engine = ScriptedEngine(judge_fn=yes)
    items = [(item["prompt"], FAILING), ("Tell a joke.", "Ha."), ("Name a colour.", "Blue.")]
    metadata = {item["prompt"]: meta(item), "Tell a joke.": None, "Name a colour.": {"category": "free"}}
    judgments = VerifierThenLlmJudge(Judge(engine, votes=3), metadata).judge(items)
    assert [j.prompt for j in judgments] == [p for p, _ in items]
    assert judgments[0].label is Verdict.FAIL and len(judgments[0].texts) == 1  # the verifier's
    assert [j.label for j in judgments[1:]] == [Verdict.PASS, Verdict.PASS]
    assert all(len(j.texts) == 3 for j in judgments[1:])  # the LLM's votes
    assert set(engine.judged) == {items[1], items[2]}  # the LLM never saw the checkable item
    assert engine.n_calls == 1  # one batched call for all LLM-judged items

    with pytest.raises(ValueError, match="no IFEval metadata"):
        VerifierOnlyJudge(metadata).judge(items)
    llm_only = ScriptedEngine(judge_fn=no)
    out = LlmJudge(Judge(llm_only, votes=1)).judge(items)
    assert set(llm_only.judged) == set(items) and all(j.label is Verdict.FAIL for j in out)


def test_agreement_counts_items_both_judged(item: dict) -> None:
    # The LLM says Yes to everything: right on the passing response, wrong on the two failing ones.
    engine = ScriptedEngine(judge_fn=yes)
    judge = VerifierThenLlmJudge(Judge(engine, votes=3), {item["prompt"]: meta(item)})
    items = [(item["prompt"], PASSING), (item["prompt"], FAILING), (item["prompt"], "no"), ("Joke?", "Ha.")]
    result = judge.compare(items)
    assert (result.n, result.agree, result.llm_undecided) == (3, 1, 0)
    assert result.rate == pytest.approx(1 / 3)
    assert ("Joke?", "Ha.") not in engine.judged
    # as the judge stage reports it: the first `limit` verifiable items only
    assert judge.agreement(items, 2) == {"agreement_n": 2, "agreement_agree": 1, "agreement_llm_undecided": 0}
    assert judge.agreement([("Joke?", "Ha.")], 2) == {"agreement_n": 0}


@pytest.fixture(scope="module")
def synth48() -> list[dict]:
    return synthesize(48, seed=0)


def test_synth_shape_balance_and_determinism(synth48: list[dict]) -> None:
    assert len(synth48) == 48 and len({r["id"] for r in synth48}) == 48
    assert len({r["prompt"] for r in synth48}) == 48
    for record in synth48:
        assert set(record) == {"id", "prompt", "instruction_id_list", "kwargs"}
        assert 1 <= len(record["instruction_id_list"]) <= 4
        assert len(record["kwargs"]) == len(record["instruction_id_list"])
        assert len(set(record["instruction_id_list"])) == len(record["instruction_id_list"])
    usage = Counter(i for r in synth48 for i in r["instruction_id_list"])
    assert set(usage) == set(instruction_types())
    assert max(usage.values()) - min(usage.values()) <= 2
    assert synthesize(10, seed=3) == synthesize(10, seed=3)
    assert synthesize(10, seed=3) != synthesize(10, seed=4)


def test_synth_prompts_are_checkable_and_not_ifeval(synth48: list[dict]) -> None:
    items = [{"key": i, **r} for i, r in enumerate(synth48)]
    result = score_responses(items, ["A short dummy answer."] * len(items))
    assert result["n_prompts"] == 48
    judged = VerifierJudge().judge([(r["prompt"], "A short dummy answer.") for r in synth48], synth48)
    assert all(j is not None and parse_verdict(j.kept) is j.label for j in judged)
    ifeval = [p["prompt"] for p in load_ifeval_prompts()]
    assert len(ifeval) == 541
    for record in synth48:
        assert not any(p == record["prompt"] or p in record["prompt"] for p in ifeval)


def test_demo_file_and_cli(synth48: list[dict], tmp_path: Path) -> None:
    demo = ROOT / "examples" / "prompts" / "synth_ifeval.jsonl"
    lines = [json.loads(line) for line in demo.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines == synth48  # the demo file is `spar prompts synth --n 48 --seed 0`

    parser = argparse.ArgumentParser()
    add_prompts_commands(parser.add_subparsers(dest="command"))
    out = tmp_path / "p.jsonl"
    args = parser.parse_args(["prompts", "synth", "--n", "5", "--seed", "0", "--out", str(out)])
    assert run_prompts_command(args) == 0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert written == synthesize(5, seed=0)
