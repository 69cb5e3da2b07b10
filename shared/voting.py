"""Self-consistency: the majority over several sampled judgments decides a response's label.

A tie -- including the case where every judgment is invalid -- is *undecided*: the caller drops the
response (stage 2) or re-judges it (tree search), it never guesses. The judgment kept as the
response's explanation is a seeded random one among those that agree with the majority.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .verdict import Verdict


@dataclass(frozen=True)
class Vote:
    """The outcome of one round of ``votes`` judgments of a single response."""

    labels: tuple[Verdict, ...]
    label: Verdict | None
    kept_index: int | None

    @property
    def n_pass(self) -> int:
        return sum(1 for v in self.labels if v is Verdict.PASS)

    @property
    def n_fail(self) -> int:
        return sum(1 for v in self.labels if v is Verdict.FAIL)

    @property
    def n_invalid(self) -> int:
        return sum(1 for v in self.labels if v is Verdict.INVALID)

    @property
    def value(self) -> float | None:
        """V = #pass / (#pass + #fail), invalid ignored; None when no vote was valid."""
        valid = self.n_pass + self.n_fail
        return self.n_pass / valid if valid else None

    @property
    def decided(self) -> bool:
        return self.label is not None

    @property
    def dissent(self) -> bool:
        """Decided, but not unanimously (0 < V < 1): the judgments worth learning from."""
        return self.decided and self.n_pass > 0 and self.n_fail > 0


def majority_vote(labels: Sequence[Verdict], rng: random.Random) -> Vote:
    """Count valid labels; the strict majority decides; the kept judgment agrees with it."""
    labels = tuple(Verdict(v) for v in labels)
    n_pass = sum(1 for v in labels if v is Verdict.PASS)
    n_fail = sum(1 for v in labels if v is Verdict.FAIL)
    if n_pass == n_fail:
        return Vote(labels=labels, label=None, kept_index=None)
    label = Verdict.PASS if n_pass > n_fail else Verdict.FAIL
    agreeing = [i for i, v in enumerate(labels) if v is label]
    return Vote(labels=labels, label=label, kept_index=rng.choice(agreeing))
