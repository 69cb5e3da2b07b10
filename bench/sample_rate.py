"""Where the sample stage's time goes on vLLM: the stage's own requests with one setting changed at a time.

The sample stage sends, per prompt shard, one ``Engine.generate`` call of ``shard_size`` requests, each
with ``n = K``, the stage's temperature/top_p and its own seed. This bench replays exactly those
requests (the experiment's prompts and sampling settings) on one vLLM engine and changes one thing at
a time, printing generated tokens/s and the ratio to the fastest variant measured in the same run:

- ``stage``: as the stage sends them, one call per shard of ``--shard-size`` prompts;
- ``one_call``: every prompt in one call (what a single shard of all prompts sends);
- ``no_seed``: one call, requests without seeds (vLLM samples from its engine-wide generator);
- ``top_p_1``: one call, top_p = 1 (no nucleus truncation: no sort of the vocabulary per step);
- ``n_split``: one call, K requests of n = 1 instead of one request of n = K (seeds derived per copy);
- ``kv_x4`` (``--kv-gb``): ``one_call`` on an engine with a larger KV cache (more sequences at once).

Every variant generates about the same number of tokens (same prompts, K and max_new_tokens), so the
tokens/s are comparable. vLLM's prefix cache is emptied before each measured variant.

    python bench/sample_rate.py [--prompts N] [--shard-size 32] [--k 5] [--max-new-tokens 192]
        [--kv-gb 1 4] [--out docs/results/sample-rate.json]
"""

from __future__ import annotations

import argparse
import json
import os
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
    for batch in batches:
        engine.generate(batch)
    seconds = time.perf_counter() - started
    stats = engine.stats.minus(before)
    return {
        "seconds": round(seconds, 2),
        "calls": len(batches),
        "completions": stats.completions,
        "generated_tokens": stats.generated_tokens,
        "tokens_per_s": round(stats.generated_tokens / seconds, 1),
    }


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
    parser.add_argument("--kv-gb", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument(
        "--variants", nargs="+", default=["stage", "one_call", "no_seed", "top_p_1", "n_split"]
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    from shared.config import VLLMEngineConfig
    from workers.engines.vllm import VLLMEngine
    from workers.models.registry import resolve_model

    rows = [json.loads(line) for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    prompts = rows[: args.prompts]
    model = resolve_model("smollm2")
    results: dict[str, Any] = {
        "prompts": len(prompts),
        "k": args.k,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "variants": {},
    }
    plans = {
        "stage": lambda: [
            _requests(prompts[i : i + args.shard_size], args) for i in range(0, len(prompts), args.shard_size)
        ],
        "one_call": lambda: [_requests(prompts, args)],
        "no_seed": lambda: [_requests(prompts, args, seed=None)],
        "top_p_1": lambda: [_requests(prompts, args, top_p=1.0)],
        "n_split": lambda: [_requests(prompts, args, split=True)],
    }
    for index, kv in enumerate(args.kv_gb):
        engine = VLLMEngine(model, VLLMEngineConfig(kv_cache_gb=kv, max_model_len=2048), seed=0)
        try:
            names = args.variants if index == 0 else ["one_call"]
            for name in names:
                label = name if index == 0 else f"one_call_kv{kv:g}"
                result = _measure(engine, plans[name]())
                result["kv_cache_gb"] = kv
                results["variants"][label] = result
                print(f"{label:>16}: {result}", flush=True)
        finally:
            engine.close()
    best = max(v["tokens_per_s"] for v in results["variants"].values())
    print("\nvariant            tokens/s   ratio to the fastest")
    for name, v in results["variants"].items():
        v["ratio_to_best"] = round(v["tokens_per_s"] / best, 3)
        print(f"{name:<18} {v['tokens_per_s']:>8}   {v['ratio_to_best']:.3f}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
