"""How busy the tree search keeps a real engine: a search shard against one flat batch of its requests.

The search sends every frontier node of every tree in one engine call per step (refinements, then
their judgments), but each call ends with its slowest generation, and between calls the engine
waits for Python (parsing, vote counting, choosing the next frontier). The physical limit is the
engine's time on ONE flat batch of the very same requests. This bench:

1. runs a search shard (BFS defaults: branching 3, beam 2, depth 3; ``--votes`` votes per child)
   on ``--trees`` negatives through the real engine, recording every request and every call's wall
   time;
2. sends exactly those requests (same messages, n, max tokens, seeds) to the same engine as one
   ``generate`` call.

Per tree count it prints: engine calls, requests, tokens, the search's wall time, the engine's
busy time inside it, the flat batch's time, **utilisation = tokens/s of the search / tokens/s of
the flat batch** (1.0 = the search keeps the engine as busy as one flat batch) and the **engine
idle fraction** = 1 - busy / search (time the engine waited for the search's own Python).
Same process, same engine, one run: ratios, not absolutes.

    python bench/search_utilisation.py --model smollm2 --engine vllm --trees 16 64 256
    python bench/search_utilisation.py --model tiny --engine hf --trees 4 16      # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.config import HFEngineConfig, ModelConfig, SearchConfig, VLLMEngineConfig  # noqa: E402
from shared.engine import Engine, GenerationRequest  # noqa: E402
from shared.judging import Judge  # noqa: E402
from shared.search import SearchRoot, search_trees  # noqa: E402


@dataclass
class RecordingEngine:
    """Passes calls through, keeping every request and each call's wall time."""

    inner: Engine
    requests: list[GenerationRequest] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)
    tokens: int = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        started = time.perf_counter()
        out = self.inner.generate(requests)
        self.call_seconds.append(time.perf_counter() - started)
        self.requests.extend(requests)
        return out


def negatives(n: int) -> list[SearchRoot]:
    """``n`` roots: synthesised instructions with a response that breaks them, judged "No"."""
    rows = [
        json.loads(line) for line in (REPO / "examples/prompts/synth_ifeval.jsonl").read_text().splitlines()
    ]
    judgment = (
        "Step-by-step verification: the Output ignores the length and format constraints.\n"
        "Final Judgement (if the Output accurately follows the Prompt): No"
    )
    return [
        SearchRoot(
            key=f"t{i}",
            prompt=rows[i % len(rows)]["prompt"],
            response=f"Here is a short answer, number {i}, that follows none of the constraints.",
            judgment=judgment,
        )
        for i in range(n)
    ]


def tokens_of(engine: Engine) -> int:
    stats = getattr(engine, "stats", None)
    return int(getattr(stats, "generated_tokens", 0)) if stats is not None else 0


def measure(engine: Engine, trees: int, args: argparse.Namespace) -> dict:
    cfg = SearchConfig(max_new_tokens=args.refine_tokens, parse_retries=args.parse_retries)
    recorder = RecordingEngine(engine)
    judge = Judge(recorder, votes=args.votes, max_new_tokens=args.judge_tokens, seed=0, tie_retries=3)
    before = tokens_of(engine)
    started = time.perf_counter()
    result = search_trees(negatives(trees), recorder, judge, cfg, seed=0)
    search_s = time.perf_counter() - started
    search_tokens = tokens_of(engine) - before
    before = tokens_of(engine)
    started = time.perf_counter()
    engine.generate(recorder.requests)
    flat_s = time.perf_counter() - started
    flat_tokens = tokens_of(engine) - before
    busy = sum(recorder.call_seconds)
    return {
        "trees": trees,
        "calls": len(recorder.call_seconds),
        "requests": len(recorder.requests),
        "completions": sum(r.n for r in recorder.requests),
        "search_tokens": search_tokens,
        "flat_tokens": flat_tokens,
        "search_s": round(search_s, 2),
        "engine_busy_s": round(busy, 2),
        "flat_s": round(flat_s, 2),
        # the definition: tokens/s of the search over tokens/s of the flat batch (the same
        # requests and seeds generate the same tokens, so this is close to flat_s / search_s)
        "utilisation": round((search_tokens / search_s) / (flat_tokens / flat_s), 3) if flat_tokens else None,
        "engine_idle_fraction": round(1 - busy / search_s, 4),
        "successes": sum(t.success_id is not None for t in result),
    }


def build(args: argparse.Namespace):
    from workers.engines import build_engine
    from workers.models.registry import resolve_model
    from workers.versions import ModelVersion

    model_path = str(resolve_model(args.model))
    config = ModelConfig(
        model=model_path,
        engine=args.engine,
        hf=HFEngineConfig(batch_size=args.hf_batch_size, dtype="float32"),
        vllm=VLLMEngineConfig(kv_cache_gb=args.kv_cache_gb, max_model_len=2048),
    )
    return build_engine(config, ModelVersion("refiner", "v0", model_path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2", help="a built-in name (smollm2, tiny) or a model folder"
    )
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--trees", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--votes", type=int, default=5)
    parser.add_argument("--refine-tokens", type=int, default=96, help="max new tokens per refinement")
    parser.add_argument("--judge-tokens", type=int, default=48, help="max new tokens per judgment")
    parser.add_argument("--parse-retries", type=int, default=3)
    parser.add_argument("--kv-cache-gb", type=float, default=2.0)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from workers.engines import close_engine

    engine = build(args)
    try:
        measure(engine, min(args.trees), args)  # warm-up: kernels, caches, allocator
        rows = [measure(engine, n, args) for n in args.trees]
    finally:
        close_engine(engine)
    cols = [
        "trees",
        "calls",
        "requests",
        "completions",
        "search_tokens",
        "flat_tokens",
        "search_s",
        "engine_busy_s",
    ]
    cols += ["flat_s", "utilisation"]
    cols.append("engine_idle_fraction")
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
