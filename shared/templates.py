"""The refiner's two prompts (judge and refine) and the extraction of a refined response.

The wording is the product's own; the two answer formats are SPaR's, because trained refiners expect
them. The exact same messages are built at search time and in the RFT training data (the reference
implementation differs by whitespace between the two, which silently shifts the training
distribution; here both go through :func:`refine_conversation`).
"""

from __future__ import annotations

import re

JUDGE_TEMPLATE = """You are an expert evaluator of instruction following. Check whether the Output \
honestly, precisely and closely follows the Prompt. Go through every constraint the Prompt sets \
(content, format, length, style, keywords, language, casing and so on) and list each one the Output \
does not satisfy. Do not judge anything the Prompt does not ask for.

[Prompt]
{prompt}
[End of Prompt]

[Output]
{response}
[End of Output]

Answer in exactly this format:
Step-by-step verification: <check each constraint of the Prompt in turn>
Final Judgement (if the Output accurately follows the Prompt): <Yes or No>"""

REFINE_INSTRUCTION = """Based on your judgement, refine the Output so that it satisfies every \
constraint of the Prompt while keeping whatever was already right. Answer in exactly this format:
Reflection on how to refine the Output: <what must change and how>
Final Refined Output: [[start]] <the complete refined Output> [[end]]"""

START_MARKER = "[[start]]"
END_MARKER = "[[end]]"

_REFINED = re.compile(re.escape(START_MARKER) + r"(.*?)" + re.escape(END_MARKER), re.DOTALL)

Message = dict[str, str]


def judge_prompt(prompt: str, response: str) -> str:
    """The user turn that asks the refiner to judge ``response`` against ``prompt``."""
    return JUDGE_TEMPLATE.format(prompt=prompt, response=response)


def judge_messages(prompt: str, response: str) -> list[Message]:
    """A judging chat: one user turn, no system prompt."""
    return [{"role": "user", "content": judge_prompt(prompt, response)}]


def refine_conversation(prompt: str, response: str, judgment: str) -> list[Message]:
    """The chat that asks for a refinement: it continues the judgment of ``response``.

    user = judge prompt, assistant = that response's kept judgment, user = refine instruction.
    """
    return [
        {"role": "user", "content": judge_prompt(prompt, response)},
        {"role": "assistant", "content": judgment},
        {"role": "user", "content": REFINE_INSTRUCTION},
    ]


def extract_refined(text: str) -> str | None:
    """The refined response between the LAST ``[[start]]`` ... ``[[end]]`` pair, stripped.

    ``None`` when the markers are missing or enclose nothing: the expansion failed to parse.
    The last pair is taken because a model sometimes quotes the format before answering.
    """
    matches = _REFINED.findall(text)
    if not matches:
        return None
    refined = matches[-1].strip()
    return refined or None
