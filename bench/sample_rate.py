"""Where the sample stage's time goes on vLLM: the stage's own requests with one setting changed at a time.

The sample stage sends, per prompt shard, one ``Engine.generate`` call of ``shard_size`` requests, each
with ``n = K``, the stage's temperature/top_p and its own seed. This bench replays exactly those
requests (the experiment's prompts and sampling settings) on one vLLM engine and changes one thing at
a time, printing generated tokens/s and the ratio to the fastest variant measured in the same run:

- ``stage_sort``: as the stage sent them before: one call per shard of ``--shard-size`` prompts, vLLM's
  own top-p (a sort of the whole vocabulary per row per step), a 1 GiB KV cache;
- ``stage``: the same requests with spar's sort-free top-p filter (``workers/engines/nucleus.py``);
- ``one_call``: every prompt in one call (what a single shard of all prompts sends);
- ``one_call_kv4``: the same on a 4 GiB KV cache (more sequences at once);
- ``no_seed``: requests without seeds (vLLM samples from its engine-wide generator);
- ``n_split``: K requests of n = 1 instead of one request of n = K (seeds derived per copy);
- ``top_p_1``: top_p = 1 (no nucleus filter at all: the engine's best rate, another distribution).

Every variant generates about the same number of tokens (same prompts, K and max_new_tokens), so the
tokens/s are comparable; each runs in its own process on a fresh engine (vLLM reads the filter choice
when it starts), and ``--repeats`` interleaves rounds so that load from elsewhere hits all alike.

    python bench/sample_rate.py [--prompts 64] [--shard-size 32] [--k 5] [--max-new-tokens 192]
        [--variants ...] [--repeats 1] [--out docs/results/sample-rate.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _requests(
    prompts: list[dict[str, Any]], args: argparse.Namespace, split: bool = False, **change: Any
) -> list[Any]:
    from shared.engine import GenerationRequest
    from shared.seeding import derive_seed

    out = []
    for p in prompts:
        seed = derive_seed(0, "sample", 0, p["id"])
        base = dict(
            messages=[{"role": "user", "content": p["prompt"]}],
            n=args.k,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            seed=seed,
        )
        base |= change
        if split:
            for copy in range(args.k):
                out.append(GenerationRequest(**(base | {"n": 1, "seed": derive_seed(seed, "copy", copy)})))
        else:
            out.append(GenerationRequest(**base))
    return out


def _measure(engine: Any, batches: list[list[Any]]) -> dict[str, Any]:
    if hasattr(engine, "reset_prefix_cache"):
        engine.reset_prefix_cache()
    before = engine.stats.snapshot()
    started = time.perf_counter()
    texts = [text for batch in batches for completions in engine.generate(batch) for text in completions]
    seconds = time.perf_counter() - started
    stats = engine.stats.minus(before)
    return {
        "seconds": round(seconds, 2),
        "calls": len(batches),
        "completions": stats.completions,
        "generated_tokens": stats.generated_tokens,
        "tokens_per_s": round(stats.generated_tokens / seconds, 1),
        "length_capped": stats.length_capped,
        # one short digest per completion, in request order: which variants sampled the same texts
        "digests": [hashlib.sha1(t.encode()).hexdigest()[:12] for t in texts],
    }


VARIANTS: dict[str, dict[str, Any]] = {
    # name: (nucleus filter, KV GiB, request plan, request changes)
    "stage_sort": {"nucleus": "sort", "kv": 1.0, "plan": "shards"},
    "stage": {"nucleus": "topk", "kv": 1.0, "plan": "shards"},
    "one_call": {"nucleus": "topk", "kv": 1.0, "plan": "one"},
    "one_call_kv4": {"nucleus": "topk", "kv": 4.0, "plan": "one"},
    "no_seed": {"nucleus": "topk", "kv": 4.0, "plan": "one", "change": {"seed": None}},
    "n_split": {"nucleus": "topk", "kv": 4.0, "plan": "split"},
    "top_p_1": {"nucleus": "topk", "kv": 4.0, "plan": "one", "change": {"top_p": 1.0}},
}
"""What each variant changes; every one sends the same prompts, K and max_new_tokens."""


def run_variant(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One variant on a fresh engine in this process (the caller sets SPAR_VLLM_NUCLEUS first)."""
    from shared.config import VLLMEngineConfig
    from workers.engines.vllm import VLLMEngine
    from workers.models.registry import resolve_model

    spec = VARIANTS[name]
    rows = [json.loads(line) for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    prompts = rows[: args.prompts]
    change = dict(spec.get("change", {}))
    if spec["plan"] == "shards":
        batches = [
            _requests(prompts[i : i + args.shard_size], args, **change)
            for i in range(0, len(prompts), args.shard_size)
        ]
    else:
        batches = [_requests(prompts, args, split=spec["plan"] == "split", **change)]
    engine = VLLMEngine(
        resolve_model("smollm2"), VLLMEngineConfig(kv_cache_gb=spec["kv"], max_model_len=2048), seed=0
    )
    try:
        warm = batches[0][0].model_copy(update={"n": 1, "max_new_tokens": 8})
        engine.generate([warm])  # first-call costs kept out of the measurement
        result = _measure(engine, batches)
    finally:
        engine.close()
    return {**result, **{k: v for k, v in spec.items() if k != "change"}, "change": change}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts-file", default=str(REPO / "examples/prompts/synth_train.jsonl"))
    parser.add_argument("--prompts", type=int, default=64, help="first N prompts of the file")
    parser.add_argument("--shard-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the variants (interleaved)")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one variant
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    if args.one is not None:
        print("RESULT " + json.dumps(run_variant(args.one, args)), flush=True)
        return

    results: dict[str, Any] = {
        "prompts": args.prompts,
        "k": args.k,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "shard_size": args.shard_size,
        "runs": {name: [] for name in args.variants},
    }
    passthrough = [
        f"--prompts-file={args.prompts_file}",
        f"--prompts={args.prompts}",
        f"--shard-size={args.shard_size}",
        f"--k={args.k}",
        f"--temperature={args.temperature}",
        f"--top-p={args.top_p}",
        f"--max-new-tokens={args.max_new_tokens}",
    ]
    for round_ in range(args.repeats):
        for name in args.variants:  # each variant in its own process: vLLM reads the filter at start
            env = dict(os.environ, SPAR_VLLM_NUCLEUS=VARIANTS[name]["nucleus"])
            done = subprocess.run(
                [sys.executable, __file__, f"--one={name}", *passthrough],
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(f"variant {name} failed:\n{done.stderr[-3000:]}")
            result = json.loads(line[len("RESULT ") :])
            results["runs"][name].append(result)
            print(
                f"round {round_} {name:>14}: {result['tokens_per_s']:8.1f} tokens/s "
                f"({result['generated_tokens']} tokens, {result['seconds']} s)",
                flush=True,
            )
    best = {name: max(r["tokens_per_s"] for r in runs) for name, runs in results["runs"].items()}
    fastest = max(best.values())
    print("\nvariant          best tokens/s   ratio to the fastest variant")
    for name, rate in best.items():
        print(f"{name:<16} {rate:>13.1f}   {rate / fastest:.3f}")
    runs = results["runs"]
    if runs.get("stage_sort") and runs.get("stage"):
        a, b = runs["stage_sort"][0]["digests"], runs["stage"][0]["digests"]
        same = sum(x == y for x, y in zip(a, b, strict=False))
        results["same_texts_sort_vs_topk"] = [same, len(a)]
        print(f"\nstage_sort and stage sampled the same text for {same} of {len(a)} completions")
    results["best_tokens_per_s"] = best
    results["ratio_to_fastest"] = {name: round(rate / fastest, 3) for name, rate in best.items()}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
