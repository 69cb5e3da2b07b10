"""The judges a run uses, and the one place that turns ``judge.backend`` into one.

:func:`build_judge` is the only factory: the judge stage, the refine stage's search, the IOPO
groups and ``POST /v1/refine`` (``workers.jobs.refine_one``) all call it, once per shard or request,
and then use the judge only through the :class:`shared.judging.Judges` protocol (``judge`` batched,
``stream`` for the streamed search). :data:`BACKENDS` is the one table of backends: what each
builds, and the facts other code needs without building one (whether every prompt must carry IFEval
metadata, whether prompts with metadata are checked by program).

Adding a backend: its name in ``shared.config.JudgeBackendName``, its judge class (here, in
:mod:`.backends`, implementing ``judge``/``stream``/``agreement``), and its :class:`Backend` row in
:data:`BACKENDS`. No call site changes.

The eval stage's judge accuracy is not a run judge: it measures the refiner *as an LLM judge* on
LLMBar-style pairs (no IFEval metadata), so it builds :class:`shared.judging.Judge` itself whatever
the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.config import JudgeConfig
from shared.engine import Engine
from shared.judging import Judge, JudgmentCache

from .backends import (
    LlmJudge,
    MetadataByPrompt,
    RunJudge,
    VerifierOnlyJudge,
    VerifierThenLlmJudge,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "LlmJudge",
    "MetadataByPrompt",
    "RunJudge",
    "VerifierOnlyJudge",
    "VerifierThenLlmJudge",
    "backend_of",
    "build_judge",
]


@dataclass(frozen=True)
class Backend:
    """One value of ``judge.backend``: how to build its judge, and what callers may need to know.

    ``needs_metadata``: every prompt must carry IFEval metadata (there is no LLM to fall back to);
    ``/v1/refine`` refuses a request without it, the IOPO stage drops pairs the rewriter cannot
    rewrite instead of asking the refiner. ``checks_metadata``: prompts that carry metadata are judged
    by the checker, so the IOPO stage writes their x' by program for the checker to verify.
    """

    name: str
    build: Callable[[Judge, MetadataByPrompt], RunJudge]
    needs_metadata: bool
    checks_metadata: bool
    summary: str

    def missing_metadata(self, metadata: Mapping[str, Any] | None) -> str | None:
        """Why one prompt with ``metadata`` cannot be judged by this backend, or None when it can.

        For ``POST /v1/refine`` (a 422 naming the field) and ``refine_one`` (checked before any model
        loads): a backend with no LLM to fall back to refuses a prompt without constraints, instead of
        judging it by something the run never used. Only the shape is checked, cheap enough for the
        API; unknown instruction ids fail the job with the checker's own message.
        """
        if not self.needs_metadata:
            return None
        ids = (metadata or {}).get("instruction_id_list")
        if isinstance(ids, list) and ids:
            return None
        return (
            f"this run judges with judge.backend '{self.name}', which needs the prompt's constraints: "
            "give metadata.instruction_id_list (a non-empty list of IFEval instruction ids) and "
            "metadata.kwargs (one object per id)"
        )


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend(
            "llm",
            lambda llm, _metadata: LlmJudge(llm),
            needs_metadata=False,
            checks_metadata=False,
            summary="the refiner's majority vote (SPaR)",
        ),
        Backend(
            "verifier",
            lambda _llm, metadata: VerifierOnlyJudge(metadata),
            needs_metadata=True,
            checks_metadata=True,
            summary="IFEval's strict checker; every prompt must carry instruction_id_list/kwargs",
        ),
        Backend(
            "verifier_then_llm",
            lambda llm, metadata: VerifierThenLlmJudge(llm, metadata),
            needs_metadata=False,
            checks_metadata=True,
            summary="the checker where a prompt carries metadata, the refiner elsewhere",
        ),
    )
}


def backend_of(config: JudgeConfig | str) -> Backend:
    """The :class:`Backend` a judge config (or a backend name) names; a clear error for an unknown one.

    The config's ``Literal`` already refuses unknown names when a config is validated; this guards
    what bypasses validation (``model_construct``, a name from a request or an older run).
    """
    name = config if isinstance(config, str) else config.backend
    try:
        return BACKENDS[name]
    except KeyError:
        known = ", ".join(sorted(BACKENDS))
        raise ValueError(f"unknown judge.backend {name!r}; expected one of: {known}") from None


def build_judge(
    config: JudgeConfig,
    engine: Engine,
    *,
    seed: int,
    tie_retries: int,
    metadata_by_prompt: MetadataByPrompt | None = None,
    cache: JudgmentCache | None = None,
) -> RunJudge:
    """The judge ``config.backend`` names, with the run's judging settings, built once per shard.

    ``seed`` and ``tie_retries`` configure the LLM judge (stage 2 drops ties: 0; the search re-judges
    them: ``search.tie_retries``); ``cache`` lets a stage share judgments it already has (the refine
    stage reuses stage 2's). ``metadata_by_prompt`` is kept by reference: the caller may add prompts
    later (the IOPO rewriter does). A backend without an LLM never calls ``engine``.
    """
    backend = backend_of(config)
    llm = Judge.from_config(engine, config, seed, tie_retries=tie_retries, cache=cache)
    return backend.build(llm, metadata_by_prompt if metadata_by_prompt is not None else {})
