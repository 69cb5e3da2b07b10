"""The refiner's two prompts (judge and refine) and the extraction of a refined response.

The wording is the product's own; the two answer formats are SPaR's, because trained refiners expect
them. The exact same messages are built at search time and in the RFT training data (the reference
implementation differs by whitespace between the two, which silently shifts the training
distribution; here both go through :func:`refine_conversation`).
"""

from __future__ import annotations

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


def extract_refined(text: str, accept_unterminated: bool = False) -> str | None:
    """The refined response after the LAST ``[[start]]``, up to the ``[[end]]`` that follows it, stripped.

    The last ``[[start]]`` is taken because a model sometimes quotes the format before answering.
    A reply whose last ``[[start]]`` has no ``[[end]]`` after it (typically cut off by the token
    limit) yields ``None`` unless ``accept_unterminated``, which keeps the text after the marker, as
    the reference implementation does. ``None`` also when there is no ``[[start]]`` or the marked
    text is empty: the expansion failed to parse.
    """
    at = text.rfind(START_MARKER)
    if at < 0:
        return None
    rest = text[at + len(START_MARKER) :]
    end = rest.find(END_MARKER)
    if end < 0 and not accept_unterminated:
        return None
    refined = (rest if end < 0 else rest[:end]).strip()
    return refined or None
