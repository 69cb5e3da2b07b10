"""HF versus vLLM on SmolLM2, in one run: load time, tokens/s, wall time and their ratios.

Two workloads per engine, each through the engine a run would build (``workers.engines.build_engine``:
vLLM hosted in its child process, HF in this process):

* ``fixed``: one batch of identical chat requests (default 32 x 128 new tokens, temperature 0.9,
  seeded), the same for both engines: a clean throughput comparison.
* ``pipeline``: the real stage code (``LocalExecutor``: sample -> judge -> refine tree search) on
  the demo's prompts and the demo's scaled-down settings. The engines sample differently, so the
  searches can take different paths; tokens/s is comparable, wall time only roughly.

Throughput is generated tokens (the engines' own ``stats``, carried into the stage manifests) per
second of generation time (load excluded). The machine's load average is printed: on a shared
machine, compare the ratios of one run, not absolute numbers across runs.

    python bench/engine_compare.py [--model DIR] [--prompts 6] [--requests 32] [--max-new-tokens 128]
                                   [--hf-batch-size 32] [--kv-cache-gb 1] [--engines hf,vllm]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402

from shared.config import HFEngineConfig, ModelConfig, RunConfig, VLLMEngineConfig  # noqa: E402
from shared.engine import GenerationRequest  # noqa: E402

DEFAULT_MODEL = Path(os.environ.get("SPAR_CACHE_DIR", REPO / ".cache")) / "models" / "smollm2-135m-instruct"
STAGES = ["sample", "judge", "refine"]


@dataclass
class Result:
    engine: str
    load_s: float = 0.0
    fixed_s: float = 0.0
    fixed_tokens: int = 0
    pipeline_s: float = 0.0
    pipeline_tokens: int = 0
    pipeline_loads: float = 0.0
    stage_s: dict[str, float] = field(default_factory=dict)

    @property
    def fixed_tps(self) -> float:
        return self.fixed_tokens / self.fixed_s

    @property
    def pipeline_tps(self) -> float:
        return self.pipeline_tokens / max(self.pipeline_s - self.pipeline_loads, 1e-9)


def model_config(engine: str, model: Path, args: argparse.Namespace) -> ModelConfig:
    vllm: dict = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 2048}
    if "kv_cache_gb" in VLLMEngineConfig.model_fields:
        vllm["kv_cache_gb"] = float(args.kv_cache_gb)
    else:  # vLLM CPU's own setting (GiB), until the engine config carries it
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(args.kv_cache_gb))
    return ModelConfig(
        model=str(model),
        engine=engine,
        hf=HFEngineConfig(batch_size=args.hf_batch_size, dtype="float32"),
        vllm=VLLMEngineConfig(**vllm),
    )


def fixed_requests(args: argparse.Namespace) -> list[GenerationRequest]:
    from bench.hf_engine import _INSTRUCTIONS

    return [
        GenerationRequest(
            messages=[{"role": "user", "content": _INSTRUCTIONS[i % len(_INSTRUCTIONS)]}],
            temperature=0.9,
            top_p=0.9,
            max_new_tokens=args.max_new_tokens,
            seed=i,
        )
        for i in range(args.requests)
    ]


def run_engine(engine: str, args: argparse.Namespace, work: Path) -> Result:
    from services.local import LocalExecutor
    from services.runs import create_run
    from shared.runtime.versions import ModelVersion
    from workers.engines import build_engine, close_engine

    result = Result(engine)
    model = model_config(engine, args.model, args)
    started = time.perf_counter()
    loaded = build_engine(model, ModelVersion("actor", "v0", str(args.model)))
    result.load_s = time.perf_counter() - started
    before = loaded.stats.generated_tokens
    started = time.perf_counter()
    loaded.generate(fixed_requests(args))
    result.fixed_s = time.perf_counter() - started
    result.fixed_tokens = loaded.stats.generated_tokens - before
    close_engine(loaded)
    print(f"[{engine}] load {result.load_s:.1f} s, fixed batch {result.fixed_tps:.1f} tok/s", flush=True)

    demo = yaml.safe_load((REPO / "examples" / "demo.yaml").read_text())
    config = RunConfig.model_validate(
        {
            "name": f"compare-{engine}",
            "seed": 0,
            "prompts": str(REPO / "examples" / demo["prompts"]),
            "max_prompts": args.prompts,
            "shard_size": args.prompts,
            "actor": model.model_dump(),
            "refiner": model.model_dump(),
            "sample": demo["sample"],
            "judge": demo["judge"],
            "search": demo["search"],
            "stages": STAGES,
        }
    )
    paths = create_run(config, work / "runs", f"compare-{engine}")
    executor = LocalExecutor.for_run(paths)
    loads: list[float] = []
    executor.engines.on_load = lambda role, label, seconds: loads.append(seconds)
    started = time.perf_counter()
    manifests = [executor.run_stage(0, stage) for stage in STAGES]
    result.pipeline_s = time.perf_counter() - started
    executor.engines.release()
    result.pipeline_loads = sum(loads)
    result.pipeline_tokens = sum(m["engine"].get("generated_tokens", 0) for m in manifests)
    result.stage_s = {stage: round(executor.stage_wall[(0, stage)], 1) for stage in STAGES}
    print(
        f"[{engine}] pipeline {result.pipeline_s:.1f} s (load {result.pipeline_loads:.1f} s), "
        f"{result.pipeline_tokens} tokens, {result.pipeline_tps:.1f} tok/s, stages {result.stage_s}",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--prompts", type=int, default=6)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--hf-batch-size", type=int, default=32)
    parser.add_argument("--kv-cache-gb", type=float, default=1.0)
    parser.add_argument("--engines", default="hf,vllm")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    if not (args.model / "config.json").is_file():
        sys.exit(f"{args.model} is not a model folder: spar models prepare smollm2 --out {args.model}")
    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}", flush=True)
    results: dict[str, Result] = {}
    with tempfile.TemporaryDirectory(prefix="spar-compare-") as tmp:
        for engine in args.engines.split(","):
            results[engine] = run_engine(engine, args, Path(tmp))
    print(f"load average after: {os.getloadavg()}")
    print(f"\n{'engine':8s} {'load s':>7s} {'fixed tok/s':>12s} {'pipeline s':>11s} {'pipeline tok/s':>15s}")
    for r in results.values():
        print(
            f"{r.engine:8s} {r.load_s:7.1f} {r.fixed_tps:12.1f} {r.pipeline_s:11.1f} {r.pipeline_tps:15.1f}"
        )
    if {"hf", "vllm"} <= results.keys():
        hf, vl = results["hf"], results["vllm"]
        print(
            f"\nvllm/hf: fixed-batch tokens/s x{vl.fixed_tps / hf.fixed_tps:.2f}, "
            f"pipeline tokens/s x{vl.pipeline_tps / hf.pipeline_tps:.2f}, "
            f"pipeline wall time x{vl.pipeline_s / hf.pipeline_s:.2f}, load time x{vl.load_s / hf.load_s:.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps({k: vars(v) for k, v in results.items()}, indent=2))


if __name__ == "__main__":  # vLLM spawns its engine processes: the guard is required
    main()
