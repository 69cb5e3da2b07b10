"""An experiment arm's iteration, scaled down, before and after the CPU speed-ups of issue #27.

Runs one iteration of an arm's config (by default the verifier arm) twice on this machine, one after
the other, each as a real ``spar run`` in its own process:

- ``before``: vLLM's own top-p (``SPAR_VLLM_NUCLEUS=sort``: a sort of the vocabulary per row per
  step) and float32 training (``bf16: false`` for init, the actor and the refiner);
- ``after``: the defaults, the sort-free top-p filter and bfloat16 autocast where the CPU computes it.

The scale: ``--prompts`` training prompts, ``--ifeval-limit`` IFEval prompts and ``--judge-limit``
held-out judge items, and ``--max-steps`` optimizer steps per training stage (a scaled iteration
finds a handful of pairs; a fixed step count keeps training's share of the time measurable). Every
stage's seconds come from its manifest (``shard_seconds``), tokens from the engine's counters. The
table is printed after each variant ends, and the ratio before/after per stage and in total. Outputs
of the two variants differ (another sampler and another precision give other answers and other
trees), so a search stage's time, set by its longest refinement per level, compares only roughly.

    python bench/arm_iteration.py [--config examples/experiment/smollm2_verifier.yaml] [--prompts 16]
        [--ifeval-limit 16] [--judge-limit 16] [--max-steps 8] [--runs-dir DIR] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("init", "sample", "judge", "refine", "assemble", "train_actor", "train_refiner", "eval")
VARIANTS: dict[str, dict[str, Any]] = {
    "before": {
        "nucleus": "sort",
        "sets": ["train_actor.bf16=false", "train_refiner.bf16=false", "init.refiner.bf16=false"],
    },
    "after": {"nucleus": "topk", "sets": []},
}


def run_variant(name: str, ns: argparse.Namespace) -> dict[str, Any]:
    """One ``spar run`` of the scaled iteration; its per-stage seconds and tokens from the manifests."""
    variant = VARIANTS[name]
    run_id = f"{ns.run_prefix}-{name}"
    sets = [
        f"max_prompts={ns.prompts}",
        "iterations=1",
        f"evaluation.ifeval_limit={ns.ifeval_limit}",
        f"evaluation.judge_limit={ns.judge_limit}",
        f"train_actor.max_steps={ns.max_steps}",
        f"train_refiner.max_steps={ns.max_steps}",
        *variant["sets"],
    ]
    cmd = [sys.executable, "-m", "services.cli", "run", str(ns.config), "--runs-dir", str(ns.runs_dir)]
    cmd += ["--run-id", run_id, "--no-progress"]
    for item in sets:
        cmd += ["--set", item]
    env = dict(os.environ, SPAR_VLLM_NUCLEUS=variant["nucleus"])
    log = ns.runs_dir / f"{run_id}.log"
    started = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{name}: spar run exited {code}; see {log}")
    return {"variant": name, "wall": wall, **read_run(ns.runs_dir / run_id)}


def read_run(root: Path) -> dict[str, Any]:
    """Per-stage seconds and tokens of iteration 0 (its manifests) and the trained versions' precision."""
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGES:
        manifest = root / "iter_0" / stage / "manifest.json"
        if manifest.exists():
            record = json.loads(manifest.read_text())
            engine = record.get("engine", {})
            stages[stage] = {"seconds": record["shard_seconds"], "tokens": engine.get("generated_tokens")}
    precision = {}
    for role in ("actor", "refiner"):
        meta = root / "models" / role / "v1" / "spar_version.json"
        if meta.exists():
            record = json.loads(meta.read_text())
            precision[role] = record.get("metrics", record).get("precision")
    return {"stages": stages, "precision": precision, "run": str(root)}


def table(results: dict[str, dict[str, Any]]) -> str:
    names = [n for n in ("before", "after") if n in results]
    lines = ["| stage | " + " | ".join(f"{n} s" for n in names) + " | before/after | tokens |"]
    lines.append("|---" * (len(names) + 3) + "|")
    totals = dict.fromkeys(names, 0.0)
    for stage in STAGES:
        cells = [results[n]["stages"].get(stage) for n in names]
        if not any(cells):
            continue
        for n, c in zip(names, cells, strict=True):
            totals[n] += c["seconds"] if c else 0.0
        ratio = "-"
        if len(names) == 2 and all(cells) and cells[1]["seconds"] > 0.05:
            ratio = f"{cells[0]['seconds'] / cells[1]['seconds']:.2f}x"
        tokens = " / ".join(str(c["tokens"]) if c and c["tokens"] else "-" for c in cells)
        seconds = " | ".join(f"{c['seconds']:.1f}" if c else "-" for c in cells)
        lines.append(f"| {stage} | {seconds} | {ratio} | {tokens} |")
    total = " | ".join(f"{totals[n]:.1f}" for n in names)
    ratio = f"{totals['before'] / totals['after']:.2f}x" if len(names) == 2 and totals["after"] else "-"
    lines.append(f"| total | {total} | {ratio} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=REPO / "examples/experiment/smollm2_verifier.yaml")
    parser.add_argument("--prompts", type=int, default=16, help="training prompts (max_prompts)")
    parser.add_argument("--ifeval-limit", type=int, default=16)
    parser.add_argument("--judge-limit", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=8, help="optimizer steps per training stage")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["after", "before"])
    parser.add_argument("--runs-dir", type=Path, default=Path("/tmp/spar-arm-iteration"))
    parser.add_argument("--run-prefix", default="it", help="run ids are <prefix>-<variant>")
    parser.add_argument("--out", type=Path, help="write the per-stage results as JSON here")
    ns = parser.parse_args()
    ns.runs_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for name in ns.variants:
        results[name] = run_variant(name, ns)
        print(f"\n{name}: {results[name]['wall']:.0f} s wall, precision {results[name]['precision']}")
        print(table(results), flush=True)
        if ns.out:
            report = {"load_average": os.getloadavg(), "results": results}
            ns.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
