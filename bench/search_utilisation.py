"""How busy the tree search keeps a real engine: a search shard against one flat batch of its requests.

The batched search sends every frontier node of every tree in one engine call per step
(refinements, then their judgments), but each call ends with its slowest generation, and between
calls the engine waits for Python (parsing, vote counting, choosing the next frontier). The streamed
search (``search.pipeline``, the default) feeds one request stream instead: each tree moves on as
soon as its own step is judged. The physical limit is the engine's time on ONE flat batch of the
very same requests. This bench, per tree count:

1. runs a search shard (BFS defaults: branching 3, beam 2, depth 3; ``--votes`` votes per child)
   on ``--trees`` negatives through the real engine, once per ``--search`` mode (batched, streamed),
   recording every request, the engine calls and the time the engine had nothing to run;
2. sends exactly the batched search's requests (same messages, n, max tokens, seeds) to the same
   engine as one ``generate`` call; both searches must have sent the same requests (checked).

Every measured run starts with the engine's prefix cache empty (``reset_prefix_cache``): the runs
send the same prompts one after another, and a run that found its predecessor's prefixes cached
would skip part of its prefill. Measured on a 2-core Xeon at 64 trees, a flat batch that ran right
after the searches took 89.5 s warm against 102.5 s cold (``--keep-prefix-cache`` measures warm).

It prints, per mode: engine calls, requests, tokens, the search's wall time, the flat batch's time,
**utilisation = tokens/s of the search / tokens/s of the flat batch** (1.0 = as busy as one flat
batch) and the **engine idle fraction** (batched: time between calls; streamed: time with no
request in flight). Same process, same engine, one run: ratios, not absolutes. The engine is built
as a worker builds it (vLLM in its engine host process).

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
    """Passes calls and streams through, keeping every request and the engine's idle time."""

    inner: Engine
    requests: list[GenerationRequest] = field(default_factory=list)
    call_seconds: list[float] = field(default_factory=list)
    streams: int = 0
    idle_seconds: float = 0.0  # streams only: time with nothing in flight

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        started = time.perf_counter()
        out = self.inner.generate(requests)
        self.call_seconds.append(time.perf_counter() - started)
        self.requests.extend(requests)
        return out

    def open_stream(self):  # noqa: ANN201
        from shared.streaming import BatchedStream

        opener = getattr(self.inner, "open_stream", None)
        if not callable(opener):
            return BatchedStream(self)  # each wait is a recorded generate call
        self.streams += 1
        return RecordingStream(self, opener())


@dataclass
class RecordingStream:
    owner: RecordingEngine
    inner: object
    idle_since: float | None = None

    def submit(self, tag, request, priority: int = 0) -> None:  # noqa: ANN001
        self.owner.requests.append(request)
        self.inner.submit(tag, request, priority)

    def poll(self):  # noqa: ANN201
        if self.idle_since is not None:  # the search submitted more: the engine has work again
            self.owner.idle_seconds += time.perf_counter() - self.idle_since
            self.idle_since = None
        done = self.inner.poll()
        if not self.inner.pending:
            self.idle_since = time.perf_counter()
        return done

    @property
    def pending(self) -> int:
        return self.inner.pending

    def close(self) -> None:
        self.inner.close()


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


def start_cold(engine: Engine, args: argparse.Namespace) -> None:
    """Empty the engine's prefix cache before a measured run (unless ``--keep-prefix-cache``)."""
    reset = getattr(engine, "reset_prefix_cache", None)
    if args.keep_prefix_cache or not callable(reset):
        return
    if not reset():
        raise RuntimeError("the engine refused to empty its prefix cache (were requests still running?)")


def search_once(
    engine: Engine, trees: int, args: argparse.Namespace, pipeline: bool
) -> tuple[dict, RecordingEngine]:
    start_cold(engine, args)
    cfg = SearchConfig(max_new_tokens=args.refine_tokens, parse_retries=args.parse_retries, pipeline=pipeline)
    recorder = RecordingEngine(engine)
    judge = Judge(recorder, votes=args.votes, max_new_tokens=args.judge_tokens, seed=0, tie_retries=3)
    before = tokens_of(engine)
    started = time.perf_counter()
    result = search_trees(negatives(trees), recorder, judge, cfg, seed=0)
    search_s = time.perf_counter() - started
    if recorder.streams:
        calls, idle = recorder.streams, recorder.idle_seconds
    else:
        calls, idle = len(recorder.call_seconds), search_s - sum(recorder.call_seconds)
    return {
        "trees": trees,
        "search": "streamed" if pipeline else "batched",
        "calls": calls,
        "requests": len(recorder.requests),
        "completions": sum(r.n for r in recorder.requests),
        "search_tokens": tokens_of(engine) - before,
        "search_s": round(search_s, 2),
        "engine_idle_fraction": round(idle / search_s, 4),
        "successes": sum(t.success_id is not None for t in result),
        "trees_json": json.dumps([t.row(t.key).as_record() for t in result], sort_keys=True),
    }, recorder


def request_key(request: GenerationRequest) -> str:
    return request.model_dump_json()


def measure(engine: Engine, trees: int, args: argparse.Namespace) -> list[dict]:
    rows, recorders = [], []
    for mode in args.search:
        row, recorder = search_once(engine, trees, args, pipeline=mode == "streamed")
        rows.append(row)
        recorders.append(recorder)
    requests = recorders[0].requests
    start_cold(engine, args)
    before = tokens_of(engine)
    started = time.perf_counter()
    engine.generate(requests)
    flat_s = time.perf_counter() - started
    flat_tokens = tokens_of(engine) - before
    same_requests = all(
        sorted(map(request_key, r.requests)) == sorted(map(request_key, requests)) for r in recorders
    )
    same_trees = len({row["trees_json"] for row in rows}) == 1
    for row in rows:
        row.pop("trees_json")
        row |= {
            "flat_tokens": flat_tokens,
            "flat_s": round(flat_s, 2),
            # the definition: tokens/s of the search over tokens/s of the flat batch
            "utilisation": round((row["search_tokens"] / row["search_s"]) / (flat_tokens / flat_s), 3)
            if flat_tokens
            else None,
            "same_requests": same_requests,
            "same_trees": same_trees,
            "prefix_cache": "kept" if args.keep_prefix_cache else "emptied before each run",
            "scheduling_policy": args.scheduling_policy,
        }
    return rows


def build(args: argparse.Namespace):
    from shared.runtime.versions import ModelVersion
    from workers.engines import build_engine
    from workers.models.registry import resolve_model

    model_path = str(resolve_model(args.model))
    config = ModelConfig(
        model=model_path,
        engine=args.engine,
        hf=HFEngineConfig(batch_size=args.hf_batch_size, dtype="float32"),
        vllm=VLLMEngineConfig(
            kv_cache_gb=args.kv_cache_gb, max_model_len=2048, scheduling_policy=args.scheduling_policy
        ),
    )
    return build_engine(config, ModelVersion("refiner", "v0", model_path), isolated=args.isolated)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2", help="a built-in name (smollm2, tiny) or a model folder"
    )
    parser.add_argument("--engine", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--trees", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--votes", type=int, default=5)
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure each tree count this many times (a search's tail varies from run to run)",
    )
    parser.add_argument("--warmup-trees", type=int, default=2, help="a first, unreported shard")
    parser.add_argument("--refine-tokens", type=int, default=96, help="max new tokens per refinement")
    parser.add_argument("--judge-tokens", type=int, default=48, help="max new tokens per judgment")
    parser.add_argument("--parse-retries", type=int, default=3)
    parser.add_argument("--kv-cache-gb", type=float, default=2.0)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument(
        "--scheduling-policy",
        choices=["priority", "fcfs"],
        default="priority",
        help="vLLM's queue order (vllm.scheduling_policy): the streamed search's priorities, or arrival",
    )
    parser.add_argument(
        "--keep-prefix-cache",
        action="store_true",
        help="do not empty the prefix cache between runs (later runs then find earlier prompts cached)",
    )
    parser.add_argument(
        "--search",
        nargs="+",
        choices=["batched", "streamed"],
        default=["batched", "streamed"],
        help="the search modes to measure (the flat batch replays the first one's requests)",
    )
    parser.add_argument(
        "--inline",
        dest="isolated",
        action="store_const",
        const=False,
        default=None,
        help="run the engine in this process (default: as a worker does, vLLM in its engine host)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()

    from workers.engines import close_engine

    engine = build(args)
    try:
        measure(engine, args.warmup_trees, args)  # warm-up: kernels, caches, allocator
        rows = []
        for n in args.trees:
            for repeat in range(args.repeats):
                rows += [row | {"repeat": repeat} for row in measure(engine, n, args)]
                print(f"measured {n} trees, repeat {repeat + 1}/{args.repeats}", file=sys.stderr, flush=True)
    finally:
        close_engine(engine)
    cols = [
        "trees",
        "repeat",
        "search",
        "calls",
        "requests",
        "completions",
        "search_tokens",
        "search_s",
        "flat_s",
        "utilisation",
        "engine_idle_fraction",
        "same_requests",
        "same_trees",
    ]
    print(" | ".join(cols))
    for row in rows:
        print(" | ".join(str(row[c]) for c in cols), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
