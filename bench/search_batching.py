"""Tree search batched across trees versus one engine call per node, on the same workload.

The engine is scripted with a cost model close to a real server's: a fixed cost per call (scheduling,
prefill launch, HTTP round trip) plus a cost per completion. Both variants run the very same search
(same trees, same answers); only the batching differs. Prints engine calls and the wall-time ratio.

    python bench/search_batching.py [--trees 64] [--call-ms 20] [--completion-ms 0.2]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scripted import ScriptedEngine, no, yes  # noqa: E402

from shared.config import SearchConfig  # noqa: E402
from shared.engine import GenerationRequest, MeteredEngine  # noqa: E402
from shared.judging import Judge  # noqa: E402
from shared.search import SearchRoot, search_trees  # noqa: E402


@dataclass
class CostlyEngine:
    inner: ScriptedEngine
    call_s: float
    completion_s: float

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        time.sleep(self.call_s + self.completion_s * sum(r.n for r in requests))
        return self.inner.generate(requests)


@dataclass
class OneCallPerNode:
    """What the reference implementation does: every node (request) is its own engine call."""

    inner: MeteredEngine

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        return [self.inner.generate([r])[0] for r in requests]


def judge_fn(prompt: str, response: str, i: int, k: int) -> str:
    # a third of the trees succeed at depth 2, the rest exhaust the budget: a mixed, realistic shape
    tree = int(prompt.split()[-1])
    return yes() if tree % 3 == 0 and response.count("/") >= 2 and i < 3 else no()


def run(batched: bool, trees: int, call_s: float, completion_s: float) -> tuple[int, float, int]:
    # the meter sits under the splitting wrapper, so it counts the calls the engine really gets
    metered = MeteredEngine(CostlyEngine(ScriptedEngine(judge_fn=judge_fn), call_s, completion_s))
    engine = metered if batched else OneCallPerNode(metered)
    roots = [SearchRoot(f"t{i}", f"prompt {i}", "neg", no()) for i in range(trees)]
    started = time.perf_counter()
    result = search_trees(roots, engine, Judge(engine, votes=5, tie_retries=3), SearchConfig(), seed=0)
    seconds = time.perf_counter() - started
    return metered.stats.calls, seconds, sum(t.success is not None for t in result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=64)
    parser.add_argument("--call-ms", type=float, default=20.0)
    parser.add_argument("--completion-ms", type=float, default=0.2)
    args = parser.parse_args()
    call_s, completion_s = args.call_ms / 1000, args.completion_ms / 1000

    b_calls, b_s, b_ok = run(True, args.trees, call_s, completion_s)
    u_calls, u_s, u_ok = run(False, args.trees, call_s, completion_s)
    assert b_ok == u_ok, "both variants must run the same search"
    print(
        f"workload: {args.trees} trees, BFS defaults (3/2/3), 5 votes, {b_ok} successes; "
        f"cost model {args.call_ms} ms/call + {args.completion_ms} ms/completion"
    )
    print(f"{'variant':<20}{'engine calls':>14}{'wall s':>10}")
    print(f"{'batched':<20}{b_calls:>14}{b_s:>10.2f}")
    print(f"{'one call per node':<20}{u_calls:>14}{u_s:>10.2f}")
    print(f"engine-call ratio (per-node / batched): {u_calls / b_calls:.1f}x")
    print(f"wall-time ratio   (per-node / batched): {u_s / b_s:.1f}x")


if __name__ == "__main__":
    main()
