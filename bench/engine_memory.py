"""How much memory each way of dropping a vLLM engine gives back: the measurement behind ProcessEngine.

For each option, in one run on the same model: the RSS of this process's whole tree and its number
of child processes before loading, with the engine loaded (after one small batch), and after
freeing it.

* ``del``: drop the ``LLM`` object, ``gc.collect()`` (what the worker did before).
* ``shutdown``: ``VLLMEngine.close()`` -- the engine core client's ``shutdown()`` (ends vLLM's
  engine-core process), then ``del`` + ``gc.collect()``.
* ``process``: the engine in a ``ProcessEngine`` child; ``close()`` ends the child's process group.

vLLM's sleep mode is not measured: ``Platform.is_sleep_mode_available()`` is false on the CPU build
(CUDA/ROCm/XPU only), and on GPU it keeps the process and its CUDA context alive by design.

Run: ``python bench/engine_memory.py [--model DIR] [--kv-cache-gb 1]`` (CPU: bfloat16, eager).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from shared.config import ModelConfig, VLLMEngineConfig
from shared.engine import GenerationRequest
from workers.engines.footprint import process_tree  # noqa: E402

REQUESTS = [
    GenerationRequest(
        messages=[{"role": "user", "content": f"Name {i + 2} colours."}], max_new_tokens=16, seed=i
    )
    for i in range(4)
]


tree = process_tree


def settle() -> tuple[float, int]:
    """Measure after children had a moment to exit (vLLM ends its engine core asynchronously)."""
    time.sleep(3.0)
    gc.collect()
    return tree()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=os.path.join(os.environ.get("SPAR_CACHE_DIR", ".cache"), "smollm2")
    )
    parser.add_argument("--kv-cache-gb", type=int, default=1)
    parser.add_argument("--options", default="process,shutdown,del")
    args = parser.parse_args()
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(args.kv_cache_gb)  # explicit KV cache on the CPU build
    settings = VLLMEngineConfig(dtype="bfloat16", enforce_eager=True, max_model_len=2048)
    rows = []
    for option in args.options.split(","):
        before = settle()
        started = time.perf_counter()
        if option == "process":
            from shared.runtime.versions import ModelVersion
            from workers.engines.process import ProcessEngine

            engine = ProcessEngine(
                ModelConfig(model=args.model, engine="vllm", vllm=settings),
                ModelVersion(role="actor", version="v0", path=args.model),
            )
        else:
            from workers.engines.vllm import VLLMEngine

            engine = VLLMEngine(args.model, settings)
        load = time.perf_counter() - started
        engine.generate(REQUESTS)
        loaded = settle()
        if option == "del":
            del engine
        else:
            engine.close()
            del engine
        after = settle()
        rows.append((option, load, before, loaded, after))
        print(
            f"{option:9s} load {load:5.1f}s | before {before[0]:6.0f} MB {before[1]} children | "
            f"loaded {loaded[0]:6.0f} MB {loaded[1]} | after {after[0]:6.0f} MB {after[1]}",
            flush=True,
        )
    print("\noption    freed/loaded-extra (1.0 = everything the engine added was given back)")
    for option, _, before, loaded, after in rows:
        added = loaded[0] - before[0]
        print(f"{option:9s} {(loaded[0] - after[0]) / added:5.2f}   children left: {after[1] - before[1]}")
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    main()
