"""A scripted engine whose answers depend on the messages it is sent (no model, no mocks of internals).

It recognises the product's three kinds of chats -- a refine conversation (last turn is the refine
instruction), a judge prompt, and anything else (an actor prompt) -- and answers each with a
function the test supplies. It records every call so tests can count engine calls and requests.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from shared.engine import GenerationRequest
from shared.templates import REFINE_INSTRUCTION

_JUDGE = re.compile(r"\[Prompt\]\n(.*)\n\[End of Prompt\]\n\n\[Output\]\n(.*)\n\[End of Output\]", re.DOTALL)

# (prompt, response, index of this completion, times this pair was judged before) -> judgment text
JudgeFn = Callable[[str, str, int, int], str]
# (prompt, parent response, parent judgment, index, attempt) -> refiner reply
RefineFn = Callable[[str, str, str, int, int], str]
# (prompt, index) -> actor response
SampleFn = Callable[[str, int], str]


FINAL = "Final Judgement (if the Output accurately follows the Prompt):"


def yes(_p: str = "", _r: str = "", _i: int = 0, _k: int = 0) -> str:
    return f"Step-by-step verification: all constraints met.\n{FINAL} Yes"


def no(_p: str = "", _r: str = "", _i: int = 0, _k: int = 0) -> str:
    return f"Step-by-step verification: a constraint is missed.\n{FINAL} No"


def refined(text: str) -> str:
    return f"Reflection on how to refine the Output: fix it.\nFinal Refined Output: [[start]] {text} [[end]]"


def default_refine(prompt: str, response: str, judgment: str, index: int, attempt: int) -> str:
    return refined(f"{response}/{index}")


def default_sample(prompt: str, index: int) -> str:
    return f"answer {index} to {prompt}"


def split_judge_prompt(content: str) -> tuple[str, str]:
    match = _JUDGE.search(content)
    assert match, "not a judge prompt"
    return match.group(1), match.group(2)


@dataclass
class ScriptedEngine:
    judge_fn: JudgeFn = no
    refine_fn: RefineFn = default_refine
    sample_fn: SampleFn = default_sample
    calls: list[list[GenerationRequest]] = field(default_factory=list)
    judged: Counter = field(default_factory=Counter)
    refine_attempts: Counter = field(default_factory=Counter)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        self.calls.append(list(requests))
        out: list[list[str]] = []
        for request in requests:
            last = request.messages[-1]["content"]
            if last == REFINE_INSTRUCTION:
                prompt, response = split_judge_prompt(request.messages[0]["content"])
                judgment = request.messages[1]["content"]
                key = (prompt, response)
                attempt = self.refine_attempts[key]
                self.refine_attempts[key] += 1
                out.append([self.refine_fn(prompt, response, judgment, i, attempt) for i in range(request.n)])
            elif "[End of Output]" in last:
                prompt, response = split_judge_prompt(last)
                before = self.judged[(prompt, response)]
                self.judged[(prompt, response)] += 1
                out.append([self.judge_fn(prompt, response, i, before) for i in range(request.n)])
            else:
                out.append([self.sample_fn(last, i) for i in range(request.n)])
        return out

    @property
    def n_calls(self) -> int:
        return len(self.calls)

    def kinds(self) -> list[str]:
        """The kind of each call, for asserting the batching pattern."""
        kinds = []
        for call in self.calls:
            last = call[0].messages[-1]["content"]
            kinds.append(
                "refine" if last == REFINE_INSTRUCTION else "judge" if "[End of Output]" in last else "sample"
            )
        return kinds
