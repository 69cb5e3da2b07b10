"""IOPO groups from self-play: rewrite x into x', verify both facts by judging, count every drop."""

from scripted import ScriptedEngine, no, yes

from shared.engine import GenerationRequest
from shared.iopo import PairForGroup, build_groups
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
    assert [g["key"] for g in result.groups] == ["t0", "t1"]
    g = result.groups[0]
    assert (g["x1"], g["y1"], g["y2"]) == ("prompt 0: answer in lowercase", "good 0", "BAD 0")
    assert g["x2"] == "new prompt 0: answer in CAPITALS"
    assert dict(result.counts) == {
        "attempted": 6,
        "verified": 2,
        "dropped_unparsable": 1,
        "dropped_unchanged": 1,
        "dropped_rejected_fails_new_prompt": 1,
        "dropped_chosen_passes_new_prompt": 1,
    }
    # batched: 3 rewrite rounds (first try + 2 retries) and one judging call for all candidates
    assert engine.rewrite_calls == 3
    assert len(engine.calls) - engine.rewrite_calls == 1
