"""The judges a run can use, one class per ``judge.backend``, each a :class:`shared.judging.Judges`.

Each is built once per shard (or per ``/v1/refine`` request) by :func:`shared.judges.build_judge`
and then used as is by every caller: the judge stage, the tree search (batched or streamed), the
IOPO groups and inference-time refinement. What differs between backends lives here, in the class,
instead of in ``if backend == ...`` tests at every call site:

- :class:`LlmJudge` (``llm``): the refiner's majority vote, SPaR's judge; streamed by the LLM judge.
- :class:`VerifierOnlyJudge` (``verifier``): the IFEval checker for every item; an item without
  IFEval metadata is an error, never a silently missing label. Streamed inline (no engine).
- :class:`VerifierThenLlmJudge` (``verifier_then_llm``): the checker where metadata exists, the LLM
  elsewhere in ONE batched call; reports how often the two agree. Not streamed (see its ``stream``).

The verifier finds a prompt's metadata by its text in ``metadata_by_prompt``, a mapping the caller
owns and may extend (the IOPO stage adds each x' its rewriter writes), so it is kept by reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.engine import GenerationRequest
from shared.judging import Judge, Judges, JudgeStream, Judgment

from .verifier import Agreement, VerifierJudge, ifeval_metadata

MetadataByPrompt = Mapping[str, Any]
"""A prompt's text -> its metadata (a prompt record's free-form ``metadata``; None when it has none)."""


class RunJudge(Judges, Protocol):
    """A run's judge: the search's protocol plus what the judge stage reports about it."""

    def agreement(self, items: Sequence[tuple[str, str]], limit: int) -> dict[str, float | int]:
        """Fields added to the judge stage's counts (LLM vs verifier agreement), or {} for none."""
        ...


@dataclass
class LlmJudge:
    """``judge.backend: llm``: the refiner judges every item (majority of ``votes``)."""

    llm: Judge

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgment]:
        return self.llm.judge(items)

    def stream(self) -> JudgeStream:
        return self.llm

    def agreement(self, items: Sequence[tuple[str, str]], limit: int) -> dict[str, float | int]:
        return {}  # one judge: nothing to compare with


@dataclass
class VerifierOnlyJudge:
    """``judge.backend: verifier``: IFEval's strict checker judges every item; no LLM is used.

    Needs no engine, so the streamed search judges each child the moment it is parsed (``begin``
    always answers with a judgment) and only the refinements go through the request stream.
    """

    metadata_by_prompt: MetadataByPrompt
    checker: VerifierJudge = field(default_factory=VerifierJudge)

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgment]:
        items = list(items)
        verified, missing = _check(self.checker, self.metadata_by_prompt, items)
        if missing:
            raise ValueError(
                f"judge.backend 'verifier' but {len(missing)} item(s) have no IFEval metadata "
                f"(first at index {missing[0]}); use 'verifier_then_llm'"
            )
        return [j for j in verified if j is not None]

    def stream(self) -> JudgeStream:
        return self

    def begin(self, prompt: str, response: str) -> Judgment | GenerationRequest:
        (judgment,) = self.judge([(prompt, response)])
        return judgment

    def resume(
        self, prompt: str, response: str, texts: Sequence[str], round_no: int
    ) -> Judgment | GenerationRequest:
        raise RuntimeError("the verifier judges without the engine: it never submits a request")

    def agreement(self, items: Sequence[tuple[str, str]], limit: int) -> dict[str, float | int]:
        return {}  # no LLM judgments to compare with


@dataclass
class VerifierThenLlmJudge:
    """``judge.backend: verifier_then_llm``: the checker where a prompt has metadata, else the LLM."""

    llm: Judge
    metadata_by_prompt: MetadataByPrompt
    checker: VerifierJudge = field(default_factory=VerifierJudge)

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgment]:
        items = list(items)
        verified, missing = _check(self.checker, self.metadata_by_prompt, items)
        if missing:
            # One batched call for everything the verifier could not judge.
            for index, judgment in zip(missing, self.llm.judge([items[i] for i in missing]), strict=True):
                verified[index] = judgment
        return [j for j in verified if j is not None]

    def stream(self) -> JudgeStream | None:
        """None: the search keeps its batched steps for this judge, as it always has.

        Streaming it would be possible (verifier in ``begin``, else the LLM's request), but on an
        engine that is not batch-invariant the LLM's texts could then change with the batches' make-up,
        and existing runs must keep their outputs.
        """
        return None

    def agreement(self, items: Sequence[tuple[str, str]], limit: int) -> dict[str, float | int]:
        """LLM vs verifier on the first ``limit`` verifiable items, as judge-stage count fields."""
        verifiable = [it for it in items if ifeval_metadata(self.metadata_by_prompt.get(it[0])) is not None]
        if not verifiable[:limit]:
            return {"agreement_n": 0}
        result = self.compare(verifiable[:limit])
        return {
            "agreement_n": result.n,
            "agreement_agree": result.agree,
            "agreement_llm_undecided": result.llm_undecided,
        }

    def compare(self, items: Sequence[tuple[str, str]]) -> Agreement:
        """Where both can judge (items with metadata), how often the LLM majority equals the verifier."""
        items = list(items)
        verified = self.checker.judge(items, [self.metadata_by_prompt.get(p) for p, _ in items])
        both = [(item, j) for item, j in zip(items, verified, strict=True) if j is not None]
        if not both:
            return Agreement(n=0, agree=0, llm_undecided=0)
        llm = self.llm.judge([item for item, _ in both])
        agree = sum(
            1 for (_, v), j in zip(both, llm, strict=True) if j.label is not None and j.label == v.label
        )
        undecided = sum(1 for j in llm if j.label is None)
        return Agreement(n=len(both), agree=agree, llm_undecided=undecided)


def _check(
    checker: VerifierJudge, metadata_by_prompt: MetadataByPrompt, items: list[tuple[str, str]]
) -> tuple[list[Judgment | None], list[int]]:
    """The checker's judgment of each item (None where its prompt has no metadata), and those indexes."""
    verified = checker.judge(items, [metadata_by_prompt.get(p) for p, _ in items])
    return verified, [i for i, j in enumerate(verified) if j is None]
