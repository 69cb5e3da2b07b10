"""IOPO groups from self-play: rewrite x into x', verify both facts by judging, count every drop."""

import pytest
from scripted import ScriptedEngine, no, yes

from shared.engine import GenerationRequest
from shared.iopo import PairForGroup, build_groups, is_a_rewrite, rewrite_request, task_overlap
from shared.judging import Judge


class RewritingEngine(ScriptedEngine):
    """Answers rewrite requests by script; everything else (judging) goes to the ScriptedEngine."""

    def __init__(self, rewrite, judge_fn):
        super().__init__(judge_fn=judge_fn)
        self.rewrite = rewrite
        self.rewrite_calls = 0

    def generate(self, requests):
        rewrites = [r for r in requests if "Final Rewritten Prompt" in r.messages[-1]["content"]]
        if not rewrites:
            return super().generate(requests)
        assert len(rewrites) == len(requests)
        self.rewrite_calls += 1
        self.calls.append(list(requests))
        return [[self.rewrite(r, self.rewrite_calls)] for r in requests]


def pair(i: int) -> PairForGroup:
    return PairForGroup(f"t{i}", f"prompt {i}: answer in lowercase", f"good {i}", f"BAD {i}", no())


def marked(text: str) -> str:
    reflection = "Reflection on how to rewrite the Prompt: flip casing."
    return f"{reflection}\nFinal Rewritten Prompt: [[start]] {text} [[end]]"


def test_verified_groups_and_every_kind_of_drop() -> None:
    def rewrite(request: GenerationRequest, call: int) -> str:
        content = request.messages[0]["content"]
        i = int(content.split("prompt ")[1].split(":")[0])
        if i == 1 and call == 1:
            return "no markers"  # retried, then parses
        if i == 2:
            return "still no markers"  # never parses
        if i == 3:
            return marked(f"prompt {i}: answer in lowercase")  # unchanged
        return marked(f"new prompt {i}: answer in CAPITALS")

    def judge_fn(prompt, response, index, k):
        if not prompt.startswith("new prompt"):
            return no()
        i = int(prompt.split()[2].rstrip(":"))
        if i == 4:  # the negative still fails the new prompt
            return no()
        if i == 5:  # the refined response still passes it
            return yes()
        return yes() if response.startswith("BAD") else no()

    engine = RewritingEngine(rewrite, judge_fn)
    result = build_groups(
        [pair(i) for i in range(6)], engine, Judge(engine, votes=3), seed=0, parse_retries=2
    )
    assert [g.key for g in result.groups] == ["t0", "t1"]
    g = result.groups[0]
    assert (g.x1, g.y1, g.y2) == ("prompt 0: answer in lowercase", "good 0", "BAD 0")
    assert g.x2 == "new prompt 0: answer in CAPITALS"
    assert dict(result.counts) == {
        "attempted": 6,
        "candidates": 6,
        "candidates_verified": 2,
        "verified": 2,
        "dropped_unparsable": 1,
        "dropped_unchanged": 1,
        "dropped_rejected_fails_new_prompt": 1,
        "dropped_chosen_passes_new_prompt": 1,
    }
    # batched: 3 rewrite rounds (first try + 2 retries) and one judging call for all candidates
    assert engine.rewrite_calls == 3
    assert len(engine.calls) - engine.rewrite_calls == 1


def test_several_rewrites_per_pair_keep_the_first_verified_and_count_the_furthest_drop() -> None:
    """Candidate c of pair i is scripted: the group comes from the first candidate that verifies,
    and a pair with none is dropped under the reason of the candidate that got furthest."""
    plan = {  # pair -> outcome of candidates 0, 1, 2
        0: ("unparsable", "neg_fails", "ok"),  # verified by candidate 2
        1: ("ok", "ok", "ok"),  # verified by candidate 0
        2: ("unparsable", "unchanged", "neg_fails"),  # dropped: rejected_fails_new_prompt
        3: ("chosen_passes", "unchanged", "neg_fails"),  # dropped: chosen_passes_new_prompt
        4: ("unparsable", "unparsable", "unchanged"),  # dropped: unchanged
    }

    def rewrite(request: GenerationRequest, call: int) -> str:
        content = request.messages[0]["content"]
        i = int(content.split("prompt ")[1].split(":")[0])
        c = candidate_of[request.seed]
        outcome = plan[i][c]
        if outcome == "unparsable":
            return "no markers"
        if outcome == "unchanged":
            return marked(f"prompt {i}: answer in lowercase")
        return marked(f"new prompt {i} {c} {outcome}")

    def judge_fn(prompt, response, index, k):
        outcome = prompt.split()[-1]
        if outcome == "neg_fails":
            return no()
        if outcome == "chosen_passes":
            return yes()
        return yes() if response.startswith("BAD") else no()

    pairs = [pair(i) for i in range(5)]
    candidate_of = {
        rewrite_request(p, 512, 0.7, 0, c, attempt).seed: c
        for p in pairs
        for c in range(3)
        for attempt in range(2)
    }
    engine = RewritingEngine(rewrite, judge_fn)
    result = build_groups(
        pairs, engine, Judge(engine, votes=3), seed=0, parse_retries=1, rewrites=3, min_task_overlap=0.0
    )
    assert [(g.key, g.x2) for g in result.groups] == [
        ("t0", "new prompt 0 2 ok"),
        ("t1", "new prompt 1 0 ok"),
    ]
    assert dict(result.counts) == {
        "attempted": 5,
        "candidates": 15,
        "candidates_verified": 4,
        "verified": 2,
        "dropped_rejected_fails_new_prompt": 1,
        "dropped_chosen_passes_new_prompt": 1,
        "dropped_unchanged": 1,
    }
    # every candidate of every pair in one rewrite call (+1 retry round), one judging call
    assert engine.rewrite_calls == 2 and len(engine.calls) - engine.rewrite_calls == 1
    assert len(engine.calls[0]) == 15


def test_rewrites_must_be_positive() -> None:
    engine = RewritingEngine(lambda r, c: marked("x"), lambda *a: yes())
    with pytest.raises(ValueError, match="rewrites must be >= 1"):
        build_groups([pair(0)], engine, Judge(engine, votes=1), seed=0, rewrites=0)


def test_a_rewriter_writes_where_it_can_and_without_fallback_the_rest_is_dropped() -> None:
    def rewriter(p: PairForGroup, candidate: int) -> str | None:
        return f"prompt {p.key[1:]}: answer in CAPITALS" if p.key == "t0" else None

    def judge_fn(prompt, response, index, k):
        return yes() if response.startswith("BAD") else no()

    for fallback in (True, False):
        engine = RewritingEngine(lambda r, c: marked("prompt 1: answer in CAPITALS, please"), judge_fn)
        result = build_groups(
            [pair(0), pair(1)],
            engine,
            Judge(engine, votes=1),
            seed=0,
            rewriter=rewriter,
            llm_fallback=fallback,
        )
        sources = {g.key: g.x2_source for g in result.groups}
        assert result.counts["candidates_programmatic"] == 1
        if fallback:
            assert sources == {"t0": "verifier", "t1": "refiner"} and engine.rewrite_calls == 1
        else:
            assert sources == {"t0": "verifier"} and engine.rewrite_calls == 0
            assert result.counts["dropped_no_verifiable_rewrite"] == 1


def test_placeholder_echoes_and_unrelated_text_are_not_rewrites() -> None:
    """What SmolLM2-135M wrote on the demo's pairs: the template's placeholder, verbatim or not."""
    replies = {
        0: marked("<the complete new Prompt>"),
        1: marked("The complete new Prompt"),
        2: marked("Tell me a joke about cats."),  # keeps nothing of the task
        3: marked("prompt 3: answer in CAPITALS"),  # a real rewrite
    }

    def rewrite(request: GenerationRequest, call: int) -> str:
        return replies[int(request.messages[0]["content"].split("prompt ")[1].split(":")[0])]

    engine = RewritingEngine(rewrite, lambda p, r, i, k: yes() if r.startswith("BAD") else no())
    result = build_groups([pair(i) for i in range(4)], engine, Judge(engine, votes=1), seed=0)
    assert [g.key for g in result.groups] == ["t3"]
    assert result.counts["dropped_not_a_rewrite"] == 3
    assert is_a_rewrite("Write a haiku. Use three lines.", "Write a haiku. Use five lines.", 0.5)
    assert not is_a_rewrite("Write a haiku. Use three lines.", "Write an essay on rivers.", 0.5)
    assert task_overlap("a b c d", "a b x") == 0.5
