"""The judge a stage uses, built from the run's `judge.backend`: LLM, verifier, or verifier then LLM.

The search core only needs ``judge(items)``; the verifier also needs each prompt's IFEval-style
metadata, which this adapter looks up by prompt text (the prompts of a shard are known up front).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.config import JudgeConfig
from shared.engine import Engine
from shared.judging import Judge, Judgment, JudgmentCache


@dataclass
class StageJudge:
    llm: Judge
    backend: str
    metadata_by_prompt: Mapping[str, Mapping[str, Any] | None]

    @property
    def cache(self) -> JudgmentCache:
        return self.llm.cache

    @property
    def stream_judge(self) -> Judge | str | None:
        """What the streamed tree search judges with: the LLM judge, the verifier inline (it needs no
        engine), or nothing for ``verifier_then_llm`` (which routes per item: the batched search)."""
        if self.backend == "llm":
            return self.llm
        return "inline" if self.backend == "verifier" else None

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgment]:
        if self.backend == "llm":
            return self.llm.judge(items)
        from ..evaluation.verifier import CombinedJudge

        combined = CombinedJudge(self.backend, llm=self.llm)  # type: ignore[arg-type]
        return combined.judge(items, [self.metadata_by_prompt.get(p) for p, _ in items])

    def agreement(self, items: Sequence[tuple[str, str]], limit: int) -> dict[str, float | int]:
        """LLM vs verifier on up to ``limit`` verifiable items (both judge them)."""
        from ..evaluation.verifier import CombinedJudge, ifeval_metadata

        verifiable = [it for it in items if ifeval_metadata(self.metadata_by_prompt.get(it[0])) is not None][
            :limit
        ]
        if not verifiable:
            return {"agreement_n": 0}
        result = CombinedJudge("verifier_then_llm", llm=self.llm).agreement(
            verifiable, [self.metadata_by_prompt.get(p) for p, _ in verifiable]
        )
        return {
            "agreement_n": result.n,
            "agreement_agree": result.agree,
            "agreement_llm_undecided": result.llm_undecided,
        }


def stage_judge(
    engine: Engine,
    config: JudgeConfig,
    seed: int,
    tie_retries: int,
    metadata_by_prompt: Mapping[str, Mapping[str, Any] | None],
    cache: JudgmentCache | None = None,
) -> StageJudge:
    llm = Judge.from_config(engine, config, seed, tie_retries=tie_retries, cache=cache)
    return StageJudge(llm, config.backend, metadata_by_prompt)
