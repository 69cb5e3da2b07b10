"""Batched self-consistent judging with a cache.

:class:`Judge` judges many (prompt, response) pairs at once: every pair not already in the cache goes
to the engine in ONE ``generate`` call (``n = votes`` per pair); pairs whose vote is tied are
re-judged together in one more call per retry round. Seeds depend on the pair's text and the round,
so a pair gets the same judgments wherever and whenever it is judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .config import JudgeConfig
from .engine import Engine, GenerationRequest
from .seeding import derive_seed, rng_for, text_key
from .templates import judge_messages
from .verdict import Verdict, parse_verdict
from .voting import Vote, majority_vote


@dataclass(frozen=True)
class Judgment:
    """The refiner's verdict on one response: all judgments of the last round and the kept one.

    On disk it is a ``shared.records.JudgedResponseRow`` (``JudgedResponseRow.of`` writes one,
    ``row.judgment(prompt)`` reads it back): the record is declared there only.
    """

    prompt: str
    response: str
    texts: tuple[str, ...]
    vote: Vote
    rounds: int

    @property
    def label(self) -> Verdict | None:
        return self.vote.label

    @property
    def value(self) -> float | None:
        return self.vote.value

    @property
    def decided(self) -> bool:
        return self.vote.decided

    @property
    def kept(self) -> str | None:
        """The judgment text that agrees with the majority (None when undecided)."""
        return None if self.vote.kept_index is None else self.texts[self.vote.kept_index]


@dataclass
class JudgmentCache:
    """Judgments keyed by the (prompt, response) text; shared by a stage's searches."""

    entries: dict[str, Judgment] = field(default_factory=dict)
    hits: int = 0

    @staticmethod
    def key(prompt: str, response: str) -> str:
        return text_key(prompt, response)

    def get(self, prompt: str, response: str) -> Judgment | None:
        found = self.entries.get(self.key(prompt, response))
        if found is not None:
            self.hits += 1
        return found

    def put(self, judgment: Judgment) -> None:
        self.entries[self.key(judgment.prompt, judgment.response)] = judgment

    def __len__(self) -> int:
        return len(self.entries)


class JudgeStream(Protocol):
    """How the streamed tree search (``shared.search_stream``) judges one pair over a request stream.

    The streamed search never blocks on a judgment: it asks :meth:`begin` for a judgment *now* (a
    cached one, or one that needs no engine, such as the verifier's) or for the engine request of the
    first round; when that request's texts come back it hands them to :meth:`resume`, which concludes
    the judgment or asks for one more round (a tie re-judged). The search keeps no knowledge of how a
    judge works: votes, seeds, ties and the cache stay the judge's business.
    """

    def begin(self, prompt: str, response: str) -> Judgment | GenerationRequest:
        """The pair's judgment if it needs no engine call, else the request of round 0."""
        ...

    def resume(
        self, prompt: str, response: str, texts: Sequence[str], round_no: int
    ) -> Judgment | GenerationRequest:
        """The judgment concluded from round ``round_no``'s texts, or round ``round_no + 1``'s request."""
        ...


class Judges(Protocol):
    """The one judge protocol: what the search, the IOPO groups and every stage need of a judge.

    ``judge`` is batched: one :class:`Judgment` per item, in order (the batched search sends all of a
    step's children at once). ``stream`` is how the streamed search judges instead, or None when this
    judge must be used batched (the search then runs its batched steps). :class:`Judge` (the
    refiner's majority vote) is one; ``shared/judges`` builds the one a run's ``judge.backend`` names.
    """

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgment]: ...

    def stream(self) -> JudgeStream | None: ...


@dataclass
class Judge:
    """Judges (prompt, response) pairs with ``votes`` sampled judgments each, batched.

    ``tie_retries`` is 0 in stage 2 (a tie is dropped) and 3 in the tree search (a tied child is
    re-judged, then dropped).
    """

    engine: Engine
    votes: int = 5
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 1024
    seed: int = 0
    tie_retries: int = 0
    cache: JudgmentCache = field(default_factory=JudgmentCache)

    @classmethod
    def from_config(
        cls,
        engine: Engine,
        config: JudgeConfig,
        seed: int,
        tie_retries: int,
        cache: JudgmentCache | None = None,
    ) -> Judge:
        """A judge with a run's judging settings (votes and sampling)."""
        return cls(
            engine,
            votes=config.votes,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=config.max_new_tokens,
            seed=seed,
            tie_retries=tie_retries,
            cache=cache if cache is not None else JudgmentCache(),
        )

    def request(self, prompt: str, response: str, round_no: int) -> GenerationRequest:
        """The ``votes`` judgments of one pair in round ``round_no`` (0, then one per tie retry).

        The seed depends on the pair's text and the round only, so a pair gets the same judgments
        whether it is judged in a batch, alone, or streamed between other requests.
        """
        key = JudgmentCache.key(prompt, response)
        return GenerationRequest(
            messages=judge_messages(prompt, response),
            n=self.votes,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=derive_seed(self.seed, "judge", key, round_no),
        )

    def conclude(self, prompt: str, response: str, texts: Sequence[str], round_no: int) -> Judgment:
        """The majority vote of one round's judgment texts (the caller re-judges a tie, or not)."""
        key = JudgmentCache.key(prompt, response)
        labels = [parse_verdict(t) for t in texts]
        vote = majority_vote(labels, rng_for(self.seed, "keep", key, round_no))
        return Judgment(prompt, response, tuple(texts), vote, round_no + 1)

    def judge(self, items: Sequence[tuple[str, str]]) -> list[Judgment]:
        """One :class:`Judgment` per (prompt, response), in order; duplicates are judged once."""
        results: dict[str, Judgment] = {}
        pending: dict[str, tuple[str, str]] = {}
        for prompt, response in items:
            key = JudgmentCache.key(prompt, response)
            if key in results or key in pending:
                continue
            cached = self.cache.get(prompt, response)
            if cached is not None:
                results[key] = cached
            else:
                pending[key] = (prompt, response)

        for round_no in range(self.tie_retries + 1):
            if not pending:
                break
            order = list(pending)
            outputs = self.engine.generate([self.request(*pending[k], round_no) for k in order])
            still_tied: dict[str, tuple[str, str]] = {}
            for k, texts in zip(order, outputs, strict=True):
                judgment = self.conclude(*pending[k], texts, round_no)
                results[k] = judgment
                if not judgment.decided:
                    still_tied[k] = pending[k]
            pending = still_tied

        for judgment in results.values():
            self.cache.put(judgment)
        return [results[JudgmentCache.key(p, r)] for p, r in items]

    def stream(self) -> JudgeStream:
        """The LLM judge streams itself: one request per round, concluded as its texts return."""
        return self

    def begin(self, prompt: str, response: str) -> Judgment | GenerationRequest:
        """A cached judgment of the pair, or the request of its first round."""
        cached = self.cache.get(prompt, response)
        return cached if cached is not None else self.request(prompt, response, 0)

    def resume(
        self, prompt: str, response: str, texts: Sequence[str], round_no: int
    ) -> Judgment | GenerationRequest:
        """Conclude a round; a tie is re-judged (next round's request) until ``tie_retries`` run out.

        A concluded judgment goes to the cache, as :meth:`judge` does, so a later identical pair is
        a hit whichever search judged it.
        """
        judgment = self.conclude(prompt, response, texts, round_no)
        if not judgment.decided and round_no < self.tie_retries:
            return self.request(prompt, response, round_no + 1)
        self.cache.put(judgment)
        return judgment
