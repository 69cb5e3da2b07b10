"""Does bf16 mixed precision train SmolLM2 like float32 on REAL data? The yardstick is data order.

``bench/train_step.py --precision`` times the two precisions on synthetic text; this bench asks the
other question of issue #27 on the experiment's own data and recipe:

- DPO (``train_actor``): pairs built from a judge stage of a real run (for each prompt with a passing
  and a failing sample, the first of each: the "independently sampled" pairs of the pair ablation),
  trained with the run's actor learning rate, beta, batch size and max_length;
  each trained policy is then scored in float32 on unseen pairs (``--heldout``): the margin it
  learned, whatever precision computed its training loss;
- SFT (``train_refiner``): the refiner's initial RFT chats (``examples/init/refiner_sft.jsonl``).

Each objective trains three times for the same number of steps: float32 with data seed 0, mixed
precision with data seed 0, and float32 with data seed 1. The third run is the tolerance: a change
of precision should move the loss curve less than a change in the order the same data are seen,
which no one would call a different training. Printed per objective: the largest and mean absolute
loss difference of mixed vs float32 (same order) and of the two float32 orders, the DPO end margins
and whether they moved the same way, seconds per step.

    python bench/precision_agreement.py --judge-dir RUN/iter_0/judge [--steps 12] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RUNS = (("float32", 0), ("bf16_mixed", 0), ("float32", 1))


def pairs_from_judge(judge_dir: Path, limit: int) -> list[dict[str, str]]:
    """One (passing, failing) pair of sampled answers per prompt that has both, in shard order."""
    pairs: list[dict[str, str]] = []
    for shard in sorted(judge_dir.glob("shard_*.jsonl")):
        for line in shard.read_text().splitlines():
            row = json.loads(line)
            passed = [r["text"] for r in row["responses"] if r.get("label") == 1]
            failed = [r["text"] for r in row["responses"] if r.get("label") == 0]
            if passed and failed:
                pairs.append({"prompt": row["prompt"], "chosen": passed[0], "rejected": failed[0]})
            if len(pairs) >= limit:
                return pairs
    if not pairs:
        raise SystemExit(f"--judge-dir {judge_dir}: no prompt with both a passing and a failing answer")
    return pairs


def heldout_margins(
    policy_dir: Path, reference_dir: Path, pairs: list[dict[str, str]], max_length: int
) -> list[float]:
    """beta-free DPO margins of a trained policy on unseen pairs, scored in float32 for every run alike:
    (log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)), summed over response
    tokens. Scoring every policy in the same precision separates what training learned from how the
    training-time loss was computed."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from workers.training import encode_prompt_response

    tokenizer = AutoTokenizer.from_pretrained(reference_dir)

    def logps(model_dir: Path) -> list[tuple[float, float]]:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        out = []
        with torch.no_grad():
            for pair in pairs:
                sums = []
                for response in (pair["chosen"], pair["rejected"]):
                    prompt_ids, response_ids = encode_prompt_response(tokenizer, pair["prompt"], response)
                    ids = (prompt_ids + response_ids)[:max_length]
                    logits = model(torch.tensor([ids])).logits[0, :-1].float()
                    token_logps = torch.log_softmax(logits, -1).gather(1, torch.tensor(ids[1:])[:, None])[
                        :, 0
                    ]
                    sums.append(float(token_logps[len(prompt_ids) - 1 :].sum()))
                out.append((sums[0], sums[1]))
        return out

    ref, pol = logps(reference_dir), logps(policy_dir)
    return [(pc - rc) - (pr - rr) for (pc, pr), (rc, rr) in zip(pol, ref, strict=True)]


def train_once(kind: str, precision: str, seed: int, ns: argparse.Namespace) -> dict[str, Any]:
    """One training run in this process; the loss curve, margins and the median step time."""
    import torch

    from shared.config import ActorTrainConfig, SftConfig
    from workers.models.registry import resolve_model
    from workers.training.actor import train_actor
    from workers.training.refiner import train_refiner

    torch.set_num_threads(ns.threads)
    model = resolve_model("smollm2")
    stamps: list[float] = []

    def hook(*_: Any) -> None:
        stamps.append(time.perf_counter())

    common = dict(
        max_steps=ns.steps, batch_size=ns.batch_size, grad_accum=1, warmup_ratio=0.0, save_steps=None
    )
    with tempfile.TemporaryDirectory() as out:
        if kind == "dpo":
            n_train = ns.steps * ns.batch_size
            everything = pairs_from_judge(ns.judge_dir, n_train + ns.heldout)
            data, heldout = everything[:n_train], everything[n_train:]
            cfg = ActorTrainConfig(
                objective="dpo",
                learning_rate=ns.dpo_lr,
                max_length=ns.dpo_max_length,
                bf16=precision == "bf16_mixed",
                **common,
            )
            metrics = train_actor(model, data, cfg, Path(out), seed=seed, on_step=hook)
            if heldout:
                metrics["heldout_margins"] = heldout_margins(Path(out), model, heldout, ns.dpo_max_length)
        else:
            rows = [json.loads(x) for x in ns.sft_data.read_text().splitlines() if x.strip()]
            cfg = SftConfig(
                learning_rate=ns.sft_lr,
                max_length=ns.sft_max_length,
                bf16=precision == "bf16_mixed",
                nll_probe=0,
                **common,
            )
            metrics = train_refiner(
                model, rows[: ns.steps * ns.batch_size], cfg, Path(out), seed=seed, on_step=hook
            )
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "kind": kind,
        "precision": metrics.get("precision", precision),
        "seed": seed,
        "loss_curve": metrics.get("loss_curve", []),
        "margin_start": metrics.get("margin_start"),
        "margin_end": metrics.get("margin_end"),
        "sec_per_step": statistics.median(steps) if steps else None,
        "heldout_margins": metrics.get("heldout_margins", []),
    }


def _gaps(a: list[float], b: list[float]) -> dict[str, float]:
    diffs = [abs(x - y) for x, y in zip(a, b, strict=True)]
    return {"max": max(diffs), "mean": sum(diffs) / len(diffs)}


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    return cov / (va * vb) ** 0.5 if va and vb else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--judge-dir", type=Path, required=True, help="a judge stage folder of a real run")
    parser.add_argument("--sft-data", type=Path, default=REPO / "examples/init/refiner_sft.jsonl")
    parser.add_argument("--kinds", nargs="+", default=["dpo", "sft"], choices=["dpo", "sft"])
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per run")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--heldout", type=int, default=16, help="DPO: unseen pairs scored after training")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--dpo-lr", type=float, default=5e-6, help="the verifier arm's actor rate")
    parser.add_argument("--dpo-max-length", type=int, default=1024)
    parser.add_argument("--sft-lr", type=float, default=2e-5, help="the verifier arm's refiner rate")
    parser.add_argument("--sft-max-length", type=int, default=1536)
    parser.add_argument("--out", type=Path, default=None, help="write every curve as JSON here")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: kind:precision:seed
    ns = parser.parse_args()
    if ns.child:
        kind, precision, seed = ns.child.split(":")
        print("RESULT " + json.dumps(train_once(kind, precision, int(seed), ns)), flush=True)
        return

    from workers.hardware import cpu_has_native_bf16

    print(f"CPU computes bfloat16 natively: {cpu_has_native_bf16()}; threads={ns.threads}", flush=True)
    report: dict[str, Any] = {"steps": ns.steps, "batch_size": ns.batch_size, "runs": []}
    for kind in ns.kinds:
        runs = {}
        for precision, seed in RUNS:  # each in a fresh process: no warm caches, its own memory
            cmd = [sys.executable, __file__, "--child", f"{kind}:{precision}:{seed}", *sys.argv[1:]]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            if done.returncode != 0 or line is None:
                raise SystemExit(f"{kind} {precision} seed {seed} failed:\n{done.stderr[-3000:]}")
            runs[(precision, seed)] = result = json.loads(line[len("RESULT ") :])
            report["runs"].append(result)
            margins = result["heldout_margins"]
            print(  # each run as it ends: a stopped bench keeps what it measured
                f"{kind} {precision} order {seed}: loss {[round(x, 4) for x in result['loss_curve']]}, "
                f"{result['sec_per_step']:.2f} s/step"
                + (f", held-out margin mean {sum(margins) / len(margins):.4f}" if margins else ""),
                flush=True,
            )
        fp32, mixed, reorder = (runs[r]["loss_curve"] for r in RUNS)
        precision_gap, order_gap = _gaps(fp32, mixed), _gaps(fp32, reorder)
        step32, step_mixed = runs[RUNS[0]]["sec_per_step"], runs[RUNS[1]]["sec_per_step"]
        print(f"\n{kind}: {ns.steps} steps, batch {ns.batch_size}")
        print(f"  loss float32     {[round(x, 4) for x in fp32]}")
        print(f"  loss bf16 mixed  {[round(x, 4) for x in mixed]}")
        print(f"  loss float32, other order {[round(x, 4) for x in reorder]}")
        print(
            f"  |mixed - float32| max {precision_gap['max']:.4f} mean {precision_gap['mean']:.4f};"
            f" |order 1 - order 0| max {order_gap['max']:.4f} mean {order_gap['mean']:.4f};"
            f" ratio of means {precision_gap['mean'] / max(order_gap['mean'], 1e-12):.3f}"
        )
        if kind == "dpo":
            m32, mm = runs[RUNS[0]]["margin_end"], runs[RUNS[1]]["margin_end"]
            print(f"  training-batch margin at the end: float32 {m32:.4f}, mixed {mm:.4f}")
            h = [runs[r]["heldout_margins"] for r in RUNS]
            if h[0]:
                mean = [sum(x) / len(x) for x in h]
                corr = _pearson(h[0], h[1])
                print(
                    f"  held-out margins (float32 scoring, {len(h[0])} unseen pairs), mean: "
                    f"float32 {mean[0]:.4f},"
                    f" mixed {mean[1]:.4f}, float32 other order {mean[2]:.4f}; per-pair correlation"
                    f" mixed vs float32 {corr:.3f}, other order vs float32 {_pearson(h[0], h[2]):.3f}"
                )
                report[f"{kind}_heldout"] = {
                    "mean": mean,
                    "corr_mixed": corr,
                    "corr_order": _pearson(h[0], h[2]),
                }
        print(f"  s/step float32 {step32:.2f}, mixed {step_mixed:.2f}, speed-up {step32 / step_mixed:.2f}")
        report[kind] = {
            "precision_gap": precision_gap,
            "order_gap": order_gap,
            "sec_per_step": {"float32": step32, "bf16_mixed": step_mixed},
        }
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")
    if ns.out:
        ns.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
