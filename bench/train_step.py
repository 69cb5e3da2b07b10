"""Cost of an actor training step: PreferenceTrainer (dpo) versus TRL's stock DPOTrainer, and sr_dpo/iopo.

Every variant trains on the same synthetic pairs (IOPO: groups built from the same prompts and responses)
with the same arguments, in its own subprocess so that each peak RSS is its own. Seconds per optimizer
step is the median interval between consecutive ``on_step_end`` callbacks after a few warm-up steps (data
loading, forwards, backward and optimizer step included). Variants:

- ``trl_dpo``: ``trl.DPOTrainer``, ``loss_type=["sigmoid"]``, conversational prompt/chosen/rejected data;
- ``dpo``: :class:`workers.training.actor.PreferenceTrainer`, objective dpo (target: <= 1.1 x trl_dpo);
- ``sr_dpo``: two extra no-grad forwards per pair (policy and reference on the Sr-prompted sequences);
- ``iopo``: four trained sequences per group instead of two per pair (same number of groups per batch).

Models: ``tiny`` (the random 2-layer, 64-wide test model: per-step Python overhead dominates) and ``small``
(the same tokenizer, 4 layers, 512 wide: compute dominates). One intra-op thread by default: on a shared
2-core machine a second thread makes tiny matrix products tens of times slower.

    python bench/train_step.py [--models tiny small] [--steps 20] [--warmup 4] [--batch-size 4] [--threads 1]

``--precision`` compares float32 with bf16 mixed precision (bfloat16 autocast over float32 weights,
``bf16: true``) for a DPO step (``train_actor``) and an SFT step (``train_refiner``), on sequences of
a few hundred tokens: seconds per step, tokens per second, the speed-up and the largest difference of
the two loss curves (same data, same seed). Mixed precision pays off only where the CPU computes
bfloat16 natively (AVX512-BF16/AMX), which the first line says:

    python bench/train_step.py --precision --models tiny smollm2 --batch-size 2 --steps 6 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
CACHE = REPO / ".cache" / "models"
VARIANTS = ("trl_dpo", "dpo", "sr_dpo", "iopo")

_WORDS = (
    "the sea river light quiet blue stone hope spark north glass seed rain moon garden winter music".split()
)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def workload(count: int, seed: int = 0) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``count`` pairs and ``count`` IOPO groups of similar lengths (prompts ~30, responses ~40-120 words)."""
    rng = random.Random(seed)
    pairs, groups = [], []
    for _ in range(count):
        n = rng.randint(2, 6)
        prompt = f"Write about {rng.choice(_WORDS)} in exactly {n} sentences. " + _sentence(rng, 20)
        chosen = " ".join(_sentence(rng, rng.randint(8, 20)) for _ in range(n))
        rejected = " ".join(_sentence(rng, rng.randint(8, 20)) for _ in range(n + 1))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        groups.append(
            {
                "x1": prompt,
                "y1": chosen,
                "x2": prompt.replace(f"{n} sentences", f"{n + 1} sentences"),
                "y2": rejected,
            }
        )
    return pairs, groups


def model_folder(size: str) -> Path:
    """The benchmark model: the random tiny model, or a wider/deeper random Llama with its tokenizer."""
    from workers.models.tiny import tiny_model_cached

    if size == "smollm2":  # the experiment's model, prepared once into the model cache
        from workers.models.registry import resolve_model

        return resolve_model("smollm2")
    tiny = tiny_model_cached(CACHE, seed=0, imprint_steps=0)
    if size == "tiny":
        return tiny
    target = CACHE / f"{tiny.name}-bench-small"
    if (target / "config.json").exists():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(tiny)
    config.hidden_size, config.intermediate_size = 512, 1376
    config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads = 4, 8, 8
    torch.manual_seed(0)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    LlamaForCausalLM(config).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp)
    os.replace(tmp, target)
    return target


def run_variant(
    variant: str, model: Path, steps: int, warmup: int, batch_size: int, threads: int
) -> dict[str, Any]:
    """Train one variant for warmup + steps optimizer steps in this process; timings and peak RSS."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from shared.config import ActorTrainConfig
    from workers.training.actor import (
        PreferenceConfig,
        PreferenceTrainer,
        common_training_kwargs,
    )
    from workers.training.outcome import peak_rss_mb

    torch.set_num_threads(threads)
    total = steps + warmup
    pairs, groups = workload(total * batch_size)
    objective = "dpo" if variant == "trl_dpo" else variant
    cfg = ActorTrainConfig(
        objective=objective,
        learning_rate=1e-4,
        max_steps=total,
        batch_size=batch_size,
        grad_accum=1,
        max_length=512,
        warmup_ratio=0.0,
        sft_weight=0.0,
        bf16=False,  # the trainer comparison in float32; precision has its own mode (--precision)
    )
    _, kwargs = common_training_kwargs(cfg, Path("/tmp") / f"spar-bench-{os.getpid()}", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model)
    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001, ANN003
            stamps.append(time.perf_counter())

    if variant == "trl_dpo":
        from trl import DPOConfig, DPOTrainer

        data = [
            {
                "prompt": [{"role": "user", "content": p["prompt"]}],
                "chosen": [{"role": "assistant", "content": p["chosen"]}],
                "rejected": [{"role": "assistant", "content": p["rejected"]}],
            }
            for p in pairs
        ]
        args = DPOConfig(loss_type=["sigmoid"], beta=cfg.beta, **kwargs)
        trainer = DPOTrainer(
            policy,
            args=args,
            train_dataset=Dataset.from_list(data),
            processing_class=tokenizer,
            callbacks=[Stamp()],
        )
    else:
        args = PreferenceConfig(objective=objective, beta=cfg.beta, sft_weight=0.0, lam=cfg.lam, **kwargs)
        records = groups if variant == "iopo" else pairs
        trainer = PreferenceTrainer(
            policy,
            args=args,
            train_dataset=Dataset.from_list(records),
            processing_class=tokenizer,
            callbacks=[Stamp()],
        )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    intervals = [b - a for a, b in zip(stamps[warmup - 1 :], stamps[warmup:], strict=False)]
    return {
        "variant": variant,
        "sec_per_step": statistics.median(intervals),
        "steps_timed": len(intervals),
        "train_wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
        "first_loss": trainer.state.log_history[0].get("loss"),
    }


PRECISIONS = ("float32", "bf16_mixed")
KINDS = ("dpo", "sft")


def long_workload(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Pairs with responses of a few hundred tokens (what the experiment trains on), for --precision."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        prompt = "Write a detailed essay about the sea. " + _sentence(rng, 30)
        chosen = " ".join(_sentence(rng, rng.randint(12, 20)) for _ in range(18))
        rejected = " ".join(_sentence(rng, rng.randint(12, 20)) for _ in range(18))
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def run_precision(
    kind: str,
    precision: str,
    model: Path,
    steps: int,
    warmup: int,
    batch_size: int,
    threads: int,
    max_length: int,
) -> dict[str, Any]:
    """One training run (DPO via train_actor, SFT via train_refiner) in float32 or bf16 mixed precision:
    median seconds per step after ``warmup`` steps, tokens per second, the loss curve."""
    import tempfile

    import torch
    from transformers import AutoTokenizer

    from shared.config import ActorTrainConfig, SftConfig
    from workers.training.actor import train_actor
    from workers.training.refiner import train_refiner

    torch.set_num_threads(threads)
    total = steps + warmup
    pairs = long_workload(total * batch_size)
    common = dict(
        learning_rate=1e-5,
        max_steps=total,
        batch_size=batch_size,
        grad_accum=1,
        max_length=max_length,
        warmup_ratio=0.0,
        bf16=precision == "bf16_mixed",
        save_steps=None,
    )
    stamps: list[float] = []
    tokenizer = AutoTokenizer.from_pretrained(model)

    def tokens(text: str) -> int:
        return min(max_length, len(tokenizer(text)["input_ids"]))

    with tempfile.TemporaryDirectory() as out:
        if kind == "dpo":
            cfg = ActorTrainConfig(objective="dpo", sft_weight=0.0, **common)
            metrics = train_actor(
                model, pairs, cfg, Path(out), seed=0, on_step=lambda d, t: stamps.append(time.perf_counter())
            )
            per_example = [
                tokens(p["prompt"] + p["chosen"]) + tokens(p["prompt"] + p["rejected"]) for p in pairs
            ]
        else:
            chats = [
                {
                    "messages": [
                        {"role": "user", "content": p["prompt"]},
                        {"role": "assistant", "content": p["chosen"]},
                    ]
                }
                for p in pairs
            ]
            cfg = SftConfig(nll_probe=0, **common)
            metrics = train_refiner(
                model, chats, cfg, Path(out), seed=0, on_step=lambda d, t: stamps.append(time.perf_counter())
            )
            per_example = [tokens(p["prompt"] + p["chosen"]) for p in pairs]
    intervals = [b - a for a, b in zip(stamps[warmup - 1 :], stamps[warmup:], strict=False)]
    step = statistics.median(intervals)
    return {
        "kind": kind,
        "precision": metrics.get("precision", precision),
        "sec_per_step": step,
        "tokens_per_s": statistics.mean(per_example) * batch_size / step,
        "loss_curve": metrics.get("loss_curve", []),
        "peak_rss_mb": metrics.get("peak_rss_mb"),
    }


def _run_child(ns: argparse.Namespace, model: Path, extra: list[str], label: str) -> dict[str, Any]:
    """Run one measurement in a fresh process (its own peak RSS, no warm caches) and return its RESULT."""
    cmd = [sys.executable, __file__, *extra, "--model", str(model), "--steps", str(ns.steps)]
    cmd += ["--warmup", str(ns.warmup), "--batch-size", str(ns.batch_size), "--threads", str(ns.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _keep_fastest(best: dict[Any, dict[str, Any]], key: Any, result: dict[str, Any]) -> None:
    """Of repeated runs of one configuration keep the fastest (the least disturbed by other load)."""
    kept = best.get(key)
    if kept is None or result["sec_per_step"] < kept["sec_per_step"]:
        best[key] = result


def compare_precision(ns: argparse.Namespace) -> None:
    """--precision: float32 against bf16 mixed precision, DPO and SFT, per model, interleaved repeats."""
    from workers.hardware import cpu_has_native_bf16

    print(
        f"CPU computes bfloat16 natively: {cpu_has_native_bf16()}; threads={ns.threads}; "
        f"batch={ns.batch_size}; max_length={ns.max_length}; steps={ns.steps} (+{ns.warmup} warm-up)"
    )
    for size in ns.models:
        model = model_folder(size)
        best: dict[tuple[str, str], dict[str, Any]] = {}
        for _ in range(ns.repeats):
            for kind in KINDS:
                for precision in PRECISIONS:
                    extra = ["--child-precision", f"{kind}:{precision}", "--max-length", str(ns.max_length)]
                    _keep_fastest(
                        best, (kind, precision), _run_child(ns, model, extra, f"{kind} {precision}")
                    )
        print(f"\nmodel: {size} ({model.name})")
        print(
            f"{'kind':5} {'precision':11} {'s/step':>8} {'tokens/s':>9} {'speed-up':>9} "
            f"{'max |loss diff|':>16}"
        )
        for kind in KINDS:
            base = best[(kind, "float32")]
            for precision in PRECISIONS:
                r = best[(kind, precision)]
                gap = max(
                    (abs(a - b) for a, b in zip(base["loss_curve"], r["loss_curve"], strict=False)),
                    default=0.0,
                )
                print(
                    f"{kind:5} {r['precision']:11} {r['sec_per_step']:8.3f} {r['tokens_per_s']:9.1f} "
                    f"{base['sec_per_step'] / r['sec_per_step']:9.2f} {gap:16.4f}"
                )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=["tiny", "small"], choices=["tiny", "small", "smollm2"]
    )
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=4, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs (or groups) per step")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant (interleaved); best is kept")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--precision",
        action="store_true",
        help="compare float32 with bf16 mixed precision (DPO and SFT) instead of the trainers",
    )
    parser.add_argument("--max-length", type=int, default=640, help="--precision: tokens per sequence")
    parser.add_argument("--child-precision", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    ns = parser.parse_args()

    if ns.child:
        result = run_variant(ns.child, ns.model, ns.steps, ns.warmup, ns.batch_size, ns.threads)
        print("RESULT " + json.dumps(result))
        return
    if ns.child_precision:
        kind, precision = ns.child_precision.split(":")
        result = run_precision(
            kind, precision, ns.model, ns.steps, ns.warmup, ns.batch_size, ns.threads, ns.max_length
        )
        print("RESULT " + json.dumps(result))
        return
    if ns.precision:
        compare_precision(ns)
        return

    print(
        f"load average before: {os.getloadavg()[0]:.2f}; threads={ns.threads}; batch={ns.batch_size}; "
        f"steps={ns.steps} (+{ns.warmup} warm-up)"
    )
    for size in ns.models:
        model = model_folder(size)
        best: dict[str, dict[str, Any]] = {}
        for _ in range(ns.repeats):
            for variant in VARIANTS:
                _keep_fastest(best, variant, _run_child(ns, model, ["--child", variant], variant))
        print(f"\nmodel: {size} ({model.name})")
        print(f"{'variant':10} {'s/step':>9} {'peak RSS MiB':>13} {'first loss':>11}")
        for variant in VARIANTS:
            r = best[variant]
            print(f"{variant:10} {r['sec_per_step']:9.4f} {r['peak_rss_mb']:13.1f} {r['first_loss']:11.4f}")
        base, stock = best["dpo"], best["trl_dpo"]
        print(
            f"PreferenceTrainer(dpo) / TRL DPOTrainer(sigmoid): time "
            f"{base['sec_per_step'] / stock['sec_per_step']:.3f} (target <= 1.1), "
            f"peak RSS {base['peak_rss_mb'] / stock['peak_rss_mb']:.3f}"
        )
        for variant in ("sr_dpo", "iopo"):
            print(
                f"{variant} / dpo: time {best[variant]['sec_per_step'] / base['sec_per_step']:.3f}, "
                f"peak RSS {best[variant]['peak_rss_mb'] / best['dpo']['peak_rss_mb']:.3f}"
            )
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
