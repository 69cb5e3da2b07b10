"""The one batched generation interface every engine implements.

The core algorithm (sampling, judging, tree search) only ever talks to an ``Engine``: a whole batch
of chat requests goes in one ``generate`` call, mirroring vLLM's offline ``LLM.chat``. Adapters for
Hugging Face transformers and vLLM live in ``workers.engines``; tests use small scripted engines.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.errors import EngineStartError  # noqa: F401  (also importable from here)


class GenerationRequest(BaseModel):
    """One chat prompt and how to sample from it; ``n`` completions are returned for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[dict[str, str]]
    n: int = Field(default=1, ge=1)
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=512, ge=1)
    seed: int | None = None
    stop: list[str] | None = None

    @field_validator("messages")
    @classmethod
    def _messages_are_chat_turns(cls, value: list[dict[str, str]]) -> list[dict[str, str]]:
        if not value:
            raise ValueError("messages must hold at least one chat turn")
        for i, message in enumerate(value):
            if set(message) != {"role", "content"}:
                raise ValueError(f"messages[{i}] must have exactly the keys 'role' and 'content'")
            if message["role"] not in {"system", "user", "assistant"}:
                raise ValueError(f"messages[{i}].role must be system, user or assistant")
        return value


OverlongPolicy = Literal["skip", "truncate"]


def fit_to_context(
    request: GenerationRequest, prompt_tokens: int, context: int | None, policy: OverlongPolicy
) -> GenerationRequest | None:
    """``request`` as it can run in a context of ``context`` tokens, or ``None`` to skip it.

    A request fits when its prompt tokens plus ``max_new_tokens`` stay within the context. One that
    does not would make vLLM reject the whole batch (and the shard fail on every retry), so the
    engines decide per request first: ``skip`` drops it (its completions come back empty);
    ``truncate`` lowers ``max_new_tokens`` to the room left, and skips only when the prompt alone
    fills the context. ``context=None`` means no known limit.
    """
    if context is None or prompt_tokens + request.max_new_tokens <= context:
        return request
    room = context - prompt_tokens
    if policy == "truncate" and room >= 1:
        return request.model_copy(update={"max_new_tokens": room})
    return None


@runtime_checkable
class Engine(Protocol):
    """A batched text generator: for each request, its ``n`` completions, in order."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]: ...


@dataclass
class EngineStats:
    """Counters an engine (or the metering wrapper) accumulates; read as deltas per stage."""

    calls: int = 0
    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    # requests that did not fit the model's context (see fit_to_context): skipped ones returned
    # empty completions, truncated ones ran with fewer new tokens than asked
    overlong_skipped: int = 0
    overlong_truncated: int = 0
    # completions that ended because they reached max_new_tokens (not an end token or a stop string):
    # the share of answers a token limit cut off, which a stage's limits should keep small
    length_capped: int = 0

    def snapshot(self) -> EngineStats:
        return EngineStats(**vars(self))

    def minus(self, earlier: EngineStats) -> EngineStats:
        return EngineStats(**{k: getattr(self, k) - getattr(earlier, k) for k in vars(self)})

    def plus(self, other: EngineStats) -> EngineStats:
        return EngineStats(**{k: getattr(self, k) + getattr(other, k) for k in vars(self)})

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))

    @classmethod
    def from_dict(cls, counts: dict[str, Any]) -> EngineStats:
        """Read back :meth:`as_dict` (counters it does not know, from another release, are left out)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in counts.items() if k in known})


INNER_COUNTS = (
    "prompt_tokens",
    "generated_tokens",
    "overlong_skipped",
    "overlong_truncated",
    "length_capped",
)
"""What a ``MeteredEngine`` (and its streams) take from the wrapped engine's stats; calls, requests
and completions it counts itself."""


@dataclass
class MeteredEngine:
    """Wraps any engine to count calls, requests and completions, and checks its answer's shape.

    Token and over-long counts come from the wrapped engine's own ``stats`` when it keeps them (the
    HF and vLLM adapters do); a scripted engine reports none, which is fine.
    """

    inner: Engine
    stats: EngineStats = field(default_factory=EngineStats)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        requests = list(requests)
        if not requests:
            return []
        inner_stats = getattr(self.inner, "stats", None)
        before = inner_stats.snapshot() if isinstance(inner_stats, EngineStats) else None
        outputs = self.inner.generate(requests)
        if len(outputs) != len(requests):
            raise RuntimeError(f"engine returned {len(outputs)} results for {len(requests)} requests")
        for i, (request, completions) in enumerate(zip(requests, outputs, strict=True)):
            if len(completions) != request.n:
                raise RuntimeError(
                    f"engine returned {len(completions)} completions for request {i} (n={request.n})"
                )
        self.stats.calls += 1
        self.stats.requests += len(requests)
        self.stats.completions += sum(r.n for r in requests)
        if before is not None and isinstance(inner_stats, EngineStats):
            delta = inner_stats.minus(before)
            for name in INNER_COUNTS:
                setattr(self.stats, name, getattr(self.stats, name) + getattr(delta, name))
        return outputs
