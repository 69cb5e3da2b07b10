"""Bootstrap confidence intervals over prompts, so a difference between versions can be read as real.

IFEval's four metrics are ratios of sums over prompts (prompt-level: prompts passed / prompts;
instruction-level: instructions passed / instructions). Resampling *prompts* with replacement and
recomputing each ratio gives the percentile interval; resampling instructions instead would ignore
that the instructions of one prompt share a response. Seeded, so a report is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

Units = Sequence[tuple[int, int]]
"""One (passed, total) pair per prompt."""


def ratio(units: Units) -> float:
    total = sum(t for _, t in units)
    return sum(p for p, _ in units) / total if total else 0.0


def bootstrap_interval(
    units: Units, samples: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """The ``level`` percentile interval of :func:`ratio` over ``samples`` resamplings of ``units``."""
    if not 0 < level < 1:
        raise ValueError("level must be in (0, 1)")
    if not units:
        return (0.0, 0.0)
    rng = random.Random(seed)
    n = len(units)
    stats = sorted(ratio([units[rng.randrange(n)] for _ in range(n)]) for _ in range(samples))
    tail = (1 - level) / 2
    low = stats[min(samples - 1, int(tail * samples))]
    high = stats[min(samples - 1, int((1 - tail) * samples) - 1)]
    return (low, high)
