"""Throughput of the transformers engine: batch size 1 versus its configured batch size.

The same workload (chat requests, sampled, seeded, fixed ``max_new_tokens``) is generated once with
``batch_size=1`` and once with the batch size under test, on the tiny model and, when a prepared
folder is available, on SmolLM2-135M-Instruct. Throughput is generated tokens (up to and including
the end token, no padding) per second of wall time, as counted by the engine's own ``stats``.

    python bench/hf_engine.py [--smollm2 DIR] [--batch-size 16] [--requests 16] [--max-new-tokens 64]
                              [--workload sample|judge] [--device cpu|cuda] [--dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from shared.config import HFEngineConfig  # noqa: E402
from shared.engine import GenerationRequest  # noqa: E402
from shared.templates import judge_messages  # noqa: E402
from workers.engines.hf import HFEngine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SMOLLM2 = REPO / ".cache" / "models" / "smollm2-135m-instruct"
PREPARE_HINT = "spar models prepare smollm2 --out .cache/models/smollm2-135m-instruct"

_INSTRUCTIONS = [
    "Write a short poem about the sea in exactly 4 lines.",
    "Describe a city at night without using any commas.",
    "Give three facts about bees as a numbered list.",
    "Explain why people like coffee in fewer than 50 words.",
    "Write a haiku about autumn leaves.",
    "Summarize a train journey in two sentences, all in lowercase letters.",
    "Write a product description for a lighthouse lamp and include the keyword 'bright'.",
    "Describe the moon in exactly 3 sentences.",
]

_RESPONSES = [
    "The sea is blue, wide and calm. Boats sail on it every morning.",
    "bees make honey. they live in hives. they dance to share where flowers are.",
    "A lighthouse lamp, bright and strong, guides ships home through the night.",
]


@dataclass
class Measurement:
    """One timed generate() call."""

    batch_size: int
    seconds: float
    generated_tokens: int

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else float("nan")


def workload(kind: str, count: int, max_new_tokens: int, temperature: float) -> list[GenerationRequest]:
    """``count`` seeded requests shaped like one stage's engine call.

    ``sample``: instruction chats (stage 1); ``judge``: judge chats (stage 2), prompts ~6x longer.
    Each stage sends one kind only, so the benchmark does not mix them: mixing short and long
    prompts in one batch measures left padding rather than batching.
    """
    requests = []
    for i in range(count):
        instruction = _INSTRUCTIONS[i % len(_INSTRUCTIONS)]
        if kind == "judge":
            messages = judge_messages(instruction, _RESPONSES[i % len(_RESPONSES)])
        else:
            messages = [{"role": "user", "content": instruction}]
        requests.append(
            GenerationRequest(
                messages=messages, temperature=temperature, max_new_tokens=max_new_tokens, seed=1000 + i
            )
        )
    return requests


def measure(engine: HFEngine, requests: list[GenerationRequest], repeats: int) -> Measurement:
    """Time generate() on ``requests`` after a short warm-up call; the fastest of ``repeats`` runs.

    Seeded requests make every repeat generate the same tokens, so the runs are comparable and the
    minimum filters out noise from other processes on a shared machine.
    """
    engine.generate([requests[0].model_copy(update={"max_new_tokens": 4})])  # warm-up: kernels, caches
    best: Measurement | None = None
    for _ in range(repeats):
        before = engine.stats.snapshot()
        started = time.perf_counter()
        engine.generate(requests)
        seconds = time.perf_counter() - started
        tokens = engine.stats.minus(before).generated_tokens
        if best is None or seconds < best.seconds:
            best = Measurement(engine.config.batch_size, seconds, tokens)
    assert best is not None
    return best


def bench_model(name: str, path: Path, args: argparse.Namespace) -> None:
    """Print batch-1 and batch-N throughput of one model, and their ratio."""
    config = HFEngineConfig(batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    batched = HFEngine(path, config)
    load_s = time.perf_counter() - started
    single = HFEngine.from_pretrained_objects(
        batched.model, batched.tokenizer, config.model_copy(update={"batch_size": 1})
    )
    requests = workload(args.workload, args.requests, args.max_new_tokens, args.temperature)
    params = sum(p.numel() for p in batched.model.parameters())
    print(f"\n{name}: {path} ({params / 1e6:.2f}M parameters, loaded in {load_s:.1f}s, {args.device})")
    results = [measure(single, requests, args.repeats), measure(batched, requests, args.repeats)]
    for m in results:
        print(
            f"  batch_size={m.batch_size:<3} {m.seconds:7.2f}s  {m.generated_tokens:5d} tokens  "
            f"{m.tokens_per_second:8.1f} tokens/s"
        )
    ratio = results[1].tokens_per_second / results[0].tokens_per_second
    print(f"  batch_size={args.batch_size} is {ratio:.2f}x batch_size=1")


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--smollm2", type=Path, default=None, help=f"prepared folder ({DEFAULT_SMOLLM2})")
    parser.add_argument("--tiny-cache", type=Path, default=REPO / ".cache" / "models")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--workload", choices=["sample", "judge"], default="sample")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting; the fastest counts")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "auto"])
    args = parser.parse_args()

    print(
        f"workload: {args.workload}, {args.requests} requests, n=1, {args.max_new_tokens} new tokens max, "
        f"temperature {args.temperature}, seeded, best of {args.repeats}"
    )
    from workers.models.tiny import tiny_model_cached

    started = time.perf_counter()
    tiny = tiny_model_cached(args.tiny_cache)
    print(f"tiny model ready in {time.perf_counter() - started:.1f}s")
    bench_model("tiny", tiny, args)

    smollm2 = args.smollm2 or DEFAULT_SMOLLM2
    if (smollm2 / "config.json").is_file():
        bench_model("SmolLM2-135M-Instruct", smollm2, args)
    elif args.smollm2 is not None:
        raise SystemExit(f"--smollm2 {args.smollm2}: no config.json there; prepare it with: {PREPARE_HINT}")
    else:
        print(f"\nSmolLM2: skipped, no prepared folder at {DEFAULT_SMOLLM2}; prepare it with: {PREPARE_HINT}")


if __name__ == "__main__":
    main()
