"""IFEval throughput: greedy generation at batch size 1 versus the configured batch size, and the
cost of the checker.

``evaluate_ifeval`` sends every prompt in ONE ``Engine.generate`` call; the HF engine then runs
``batch_size`` rows per forward pass. This measures what that buys on the real IFEval prompts
(first ``--limit`` of the 541, greedy, fixed ``max_new_tokens``): prompts/s and generated tokens/s
at batch size 1 and at ``--batch-size`` on the same loaded weights, their ratio, and how many of
the greedy answers are identical in both runs (left padding may change float rounding). The
checker's time per prompt is measured on the run's answers and on all 541 prompts (each answered
with its own text, a stand-in of realistic length).

    python bench/eval_throughput.py [--limit 16] [--batch-size 16] [--max-new-tokens 64]
                                    [--smollm2 DIR] [--smollm2-limit 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from shared.config import HFEngineConfig  # noqa: E402
from shared.evaluation.ifeval import (  # noqa: E402
    checker,
    evaluate_ifeval,
    ifeval_requests,
    load_ifeval_prompts,
    score_responses,
)
from workers.engines.hf import HFEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SMOLLM2 = REPO / ".cache" / "models" / "smollm2-135m-instruct"
PREPARE_HINT = "spar models prepare smollm2 --out .cache/models/smollm2-135m-instruct"


def run_once(engine: HFEngine, items: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """One IFEval generation + scoring pass, with the engine's generated-token count."""
    before = engine.stats.snapshot()
    result = evaluate_ifeval(engine, max_new_tokens=max_new_tokens, items=items)
    result["generated_tokens"] = engine.stats.minus(before).generated_tokens
    return result


def bench_model(name: str, path: Path, limit: int, args: argparse.Namespace) -> None:
    """Print batch-1 and batch-N IFEval throughput of one model, their ratio and checker time."""
    config = HFEngineConfig(batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    batched = HFEngine(path, config)
    load_s = time.perf_counter() - started
    single = HFEngine.from_pretrained_objects(
        batched.model, batched.tokenizer, config.model_copy(update={"batch_size": 1})
    )
    items = load_ifeval_prompts(limit)
    print(f"\n{name}: {path} (loaded in {load_s:.1f}s, {args.device}, {len(items)} prompts)")
    single.generate(ifeval_requests(items[:1], max_new_tokens=2))  # warm-up: kernels, caches
    runs = [run_once(single, items, args.max_new_tokens), run_once(batched, items, args.max_new_tokens)]
    for engine, run in zip((single, batched), runs, strict=True):
        tokens_per_s = run["generated_tokens"] / run["generation_s"]
        print(
            f"  batch_size={engine.config.batch_size:<3} {run['generation_s']:7.2f}s  "
            f"{run['prompts_per_s']:6.2f} prompts/s  {run['generated_tokens']:6d} tokens  "
            f"{tokens_per_s:7.1f} tokens/s  checker {1000 * run['scoring_s'] / len(items):.1f} ms/prompt  "
            f"prompt-strict {100 * run['prompt_strict']:.1f}"
        )
    ratio = runs[1]["prompts_per_s"] / runs[0]["prompts_per_s"]
    same = sum(
        a["response"] == b["response"]
        for a, b in zip(runs[0]["responses"], runs[1]["responses"], strict=True)
    )
    print(f"  batch_size={args.batch_size} is {ratio:.2f}x batch_size=1 in prompts/s")
    print(f"  identical greedy answers in both runs: {same}/{len(items)}")


def bench_checker() -> None:
    """The checker alone on all 541 prompts (each prompt's text as its answer)."""
    items = load_ifeval_prompts()
    started = time.perf_counter()
    result = score_responses(items, [item["prompt"] for item in items])
    seconds = time.perf_counter() - started
    print(
        f"\nchecker: {len(items)} prompts, {result['n_instructions']} instructions in {seconds:.2f}s "
        f"= {1000 * seconds / len(items):.2f} ms/prompt (strict and loose)"
    )


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--limit", type=int, default=16, help="IFEval prompts for the tiny model")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--smollm2", type=Path, default=None, help=f"prepared folder ({DEFAULT_SMOLLM2})")
    parser.add_argument("--smollm2-limit", type=int, default=8, help="IFEval prompts for SmolLM2")
    parser.add_argument("--tiny-cache", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    args = parser.parse_args()

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per measurement, no loading bars in between
    started = time.perf_counter()
    checker()  # NLTK Punkt files and the package import, outside every timing below
    print(f"checker ready in {time.perf_counter() - started:.1f}s")
    print(f"workload: IFEval prompts in file order, greedy, {args.max_new_tokens} new tokens max, n=1")
    from workers.models.tiny import tiny_model_cached

    bench_model("tiny", tiny_model_cached(args.tiny_cache), args.limit, args)
    smollm2 = args.smollm2 or DEFAULT_SMOLLM2
    if (smollm2 / "config.json").is_file():
        bench_model("SmolLM2-135M-Instruct", smollm2, args.smollm2_limit, args)
    elif args.smollm2 is not None:
        raise SystemExit(f"--smollm2 {args.smollm2}: no config.json there; prepare it with: {PREPARE_HINT}")
    else:
        print(f"\nSmolLM2: skipped, no prepared folder at {DEFAULT_SMOLLM2}; prepare it with: {PREPARE_HINT}")
    bench_checker()


if __name__ == "__main__":
    main()
