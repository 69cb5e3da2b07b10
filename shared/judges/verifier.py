"""The IFEval-style checker as a judge: computed verdicts, written like the refiner's judgments.

Prompts written by :mod:`shared.evaluation.synth` (or taken from IFEval itself) say exactly which
constraints they impose (``instruction_id_list`` + ``kwargs``), so whether a response follows them can
be *computed* with IFEval's own checker instead of sampled from a model: no judging cost, no noise.
:class:`VerifierJudge` does that and writes its result in the refiner's judgment format
(``Step-by-step verification: ...`` then ``Final Judgement (...): Yes|No``), one line per
instruction, so :func:`shared.verdict.parse_verdict` reads it and the refinement/RFT data built from
it look the same as data built from LLM judgments. It uses the checker's STRICT test: the loose one is
an upper bound meant for reporting, not a label to train on.

This module is the checker side only (it answers None for a prompt without constraints); the judges
a run uses, and the choice between them by ``judge.backend``, are in :mod:`shared.judges`.
:class:`Agreement` is how often the LLM judge's majority agrees with the verifier: a direct estimate
of the judge's accuracy on checkable prompts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.judging import Judgment
from shared.verdict import Verdict
from shared.voting import Vote

from ..evaluation.ifeval import checker

FINAL_LINE = "Final Judgement (if the Output accurately follows the Prompt):"
# Descriptions of some instructions span lines (multiple_sections) or quote a whole prompt
# (repeat_prompt); one short line per instruction keeps the judgment readable as training text.
_MAX_DESCRIPTION = 160


def ifeval_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The checkable part of a prompt's metadata, or None when it carries no IFEval constraints.

    Accepts a prompt record's free-form metadata (extra fields are ignored) so callers can pass
    ``PromptRecord.metadata`` as is. Malformed metadata (ids and kwargs of different lengths, unknown
    ids) is an error, not "no metadata": silently falling back to the LLM would hide a broken file.
    """
    if not metadata or not metadata.get("instruction_id_list"):
        return None
    ids = list(metadata["instruction_id_list"])
    kwargs = metadata.get("kwargs")
    kwargs = [{} for _ in ids] if kwargs is None else [dict(k or {}) for k in kwargs]
    if len(kwargs) != len(ids):
        raise ValueError(f"{len(ids)} instruction ids but {len(kwargs)} kwargs entries")
    registry = checker().INSTRUCTION_DICT
    unknown = [i for i in ids if i not in registry]
    if unknown:
        raise ValueError(f"unknown IFEval instruction ids: {unknown}")
    return {"instruction_id_list": ids, "kwargs": kwargs}


def describe_instruction(instruction_id: str, kwargs: Mapping[str, Any], prompt: str = "") -> str:
    """A short human description of one instruction, from the registry's own ``build_description``."""
    instruction = checker().INSTRUCTION_DICT[instruction_id](instruction_id)
    text = instruction.build_description(**dict(kwargs))
    args = instruction.get_instruction_args()
    if args and "prompt" in args:  # same re-build the checker does for prompt-dependent instructions
        text = instruction.build_description(prompt=prompt)
    text = " ".join(str(text).split())
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 3].rstrip() + "..."


def check_response(prompt: str, response: str, metadata: Mapping[str, Any]) -> list[bool]:
    """The checker's strict result for each instruction of one (prompt, response)."""
    ifeval = checker()
    example = ifeval.InputExample(
        key=0,
        instruction_id_list=list(metadata["instruction_id_list"]),
        prompt=prompt,
        kwargs=[dict(k) for k in metadata["kwargs"]],
    )
    result = ifeval.test_instruction_following_strict(example, {prompt: response})
    return [bool(v) for v in result.follow_instruction_list]


def judgment_text(prompt: str, metadata: Mapping[str, Any], followed: Sequence[bool]) -> str:
    """The refiner-format judgment for a checked response: one line per instruction, then the verdict."""
    lines = ["Step-by-step verification:"]
    for number, (instruction_id, kwargs, ok) in enumerate(
        zip(metadata["instruction_id_list"], metadata["kwargs"], followed, strict=True), start=1
    ):
        status = "met" if ok else "NOT met"
        lines.append(
            f"{number}. {instruction_id} ({describe_instruction(instruction_id, kwargs, prompt)}): {status}."
        )
    lines.append(f"{FINAL_LINE} {'Yes' if all(followed) else 'No'}")
    return "\n".join(lines)


def unanimous_judgment(prompt: str, response: str, text: str, label: Verdict) -> Judgment:
    """A :class:`Judgment` of one text with a unanimous one-label vote (the verifier cannot tie)."""
    vote = Vote(labels=(label,), label=label, kept_index=0)
    return Judgment(prompt, response, (text,), vote, 1)


class VerifierJudge:
    """Judges (prompt, response) pairs with IFEval's strict checker where metadata says what to check."""

    def judge(
        self, items: Sequence[tuple[str, str]], metadata: Sequence[Mapping[str, Any] | None]
    ) -> list[Judgment | None]:
        """One :class:`Judgment` per item, or None where the item's metadata has no IFEval constraints."""
        if len(items) != len(metadata):
            raise ValueError(f"{len(metadata)} metadata entries for {len(items)} items")
        out: list[Judgment | None] = []
        for (prompt, response), meta in zip(items, metadata, strict=True):
            checkable = ifeval_metadata(meta)
            if checkable is None:
                out.append(None)
                continue
            followed = check_response(prompt, response, checkable)
            label = Verdict.PASS if all(followed) else Verdict.FAIL
            out.append(
                unanimous_judgment(prompt, response, judgment_text(prompt, checkable, followed), label)
            )
        return out


@dataclass(frozen=True)
class Agreement:
    """How often the LLM judge's majority label equals the verifier's, over items both judged.

    An undecided (tied) LLM vote counts as a disagreement: the LLM gave no usable label there.
    """

    n: int
    agree: int
    llm_undecided: int

    @property
    def rate(self) -> float | None:
        return self.agree / self.n if self.n else None

    def as_record(self) -> dict[str, Any]:
        return {"n": self.n, "agree": self.agree, "llm_undecided": self.llm_undecided, "rate": self.rate}
