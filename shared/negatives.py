"""Which failed responses of a prompt become negatives for the tree search."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Literal


def select_negatives(
    failed: Sequence[int], per_prompt: int | Literal["all"], rng: random.Random
) -> list[int]:
    """Indices of the responses kept as negatives, in their original order.

    ``failed`` are the indices of the prompt's responses whose majority label is FAIL. The default
    (SPaR) keeps one, chosen at random with the prompt's seeded ``rng``; ``"all"`` keeps every one.
    """
    failed = list(failed)
    if per_prompt == "all" or per_prompt >= len(failed):
        return failed
    return sorted(rng.sample(failed, per_prompt))
