"""What the distributed service costs over the in-process executor, for the very same iteration.

One SPaR iteration on the tiny model (sample, judge, refine, assemble, then DPO and RFT training
with a few steps) is run twice with an identical config:

* **local** -- ``LocalExecutor`` in this process, exactly as ``spar run`` does;
* **service** -- POST ``/v1/runs`` to the API (uvicorn subprocess, scheduler thread ticking every
  ``--scheduler-interval`` s), shards through Redis/RQ to one worker subprocess per role.

Both sides are measured warm: a first run of the same config on each side pays the imports and the
engine loads (workers keep their engines between jobs, the local executor keeps its
``LocalEngines``; the tiny model build is excluded). Then ``--repeats`` timed runs per side,
interleaved so that both see the same load on the machine; medians are compared. The service time
runs from the POST to the success time the scheduler records; the local time includes creating the
run, as the POST does. Both sides use ``--threads`` torch threads. Prints each run's wall time, the
seconds spent outside the shards themselves (the orchestration), the ratio of the median wall times
service/local (target <= 1.15), and whether every run wrote the same pairs.

    python bench/orchestration_overhead.py [--prompts 16] [--shard-size 8] [--train-steps 2]
                                           [--repeats 3] [--threads 1] [--scheduler-interval 0.3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from redis import Redis  # noqa: E402
from service_harness import Stack, data_root, private_redis, tiny_run_body, variant_prompts  # noqa: E402

from services.local import LocalEngines, LocalExecutor  # noqa: E402
from services.runs import create_run, resolve_paths  # noqa: E402
from shared.config import RunConfig  # noqa: E402
from shared.runtime.artifacts import RunPaths, read_json  # noqa: E402
from shared.runtime.shards import load_config  # noqa: E402

CACHE = REPO / ".cache" / "models"


def run_body(shard_size: int, train_steps: int) -> dict:
    return tiny_run_body(
        "overhead",
        seed=11,
        shard_size=shard_size,
        responses=4,
        votes=5,
        new_tokens=(24, 64, 64),
        train_steps=train_steps,
    )


@dataclass
class Timed:
    """One timed run: wall seconds, and the seconds its shards themselves took (from the manifests)."""

    side: str
    wall: float
    work: float
    run_dir: Path

    @property
    def outside(self) -> float:
        return self.wall - self.work


def shard_seconds(run_dir: Path) -> float:
    paths = RunPaths(run_dir)
    return sum(read_json(paths.manifest(0, stage))["shard_seconds"] for stage in load_config(paths).stages)


def local_run(config: RunConfig, root: Path, engines: LocalEngines, k: int) -> Timed:
    """``spar run`` in this process: run creation included, as the service's POST includes it."""
    started = time.perf_counter()
    paths = create_run(config, root / "local", run_id=f"local-{k}")
    LocalExecutor(paths=paths, engines=engines).run()
    wall = time.perf_counter() - started
    return Timed("local", wall, shard_seconds(paths.root), paths.root)


def service_run(stack: Stack, body: dict) -> Timed:
    """One run over REST: seconds from the POST to the success the scheduler records."""
    view, started = stack.finish_run(body)
    finished = Redis.from_url(stack.redis_url).hget(f"spar:run:{view['id']}", "updated_at")
    run_dir = Path(view["run_dir"])
    return Timed("service", float(finished or time.time()) - started, shard_seconds(run_dir), run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--shard-size", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per side, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, both sides")
    parser.add_argument("--scheduler-interval", type=float, default=0.3, help="seconds between ticks")
    args = parser.parse_args()

    import torch

    from workers.models.tiny import tiny_model_cached

    torch.set_num_threads(args.threads)
    model = tiny_model_cached(CACHE)  # the one-off build: not timed
    prompts = variant_prompts(args.prompts)
    body = run_body(args.shard_size, args.train_steps)
    runs: list[Timed] = []
    with tempfile.TemporaryDirectory(prefix="spar-overhead-") as tmp:
        root = data_root(Path(tmp), model, prompts)
        config = resolve_paths(RunConfig.model_validate(body), root.resolve())
        engines = LocalEngines(config)
        env = {"OMP_NUM_THREADS": str(args.threads), "SPAR_SCHEDULER_INTERVAL": str(args.scheduler_interval)}
        with private_redis(Path(tmp)) as url:
            stack = Stack(root=root, redis_url=url, env_extra=env)
            try:
                stack.start_api()
                stack.start_workers()
                local_run(config, root, engines, 0)  # warm-ups: imports and engine loads, both sides
                service_run(stack, body)
                for k in range(1, args.repeats + 1):  # interleaved: both sides see the same machine
                    runs.append(local_run(config, root, engines, k))
                    runs.append(service_run(stack, body))
            finally:
                stack.close()
        pairs = {(r.run_dir / "iter_0/assemble/pairs.jsonl").read_bytes() for r in runs}

    shards = -(-args.prompts // args.shard_size)
    print(
        f"one iteration, tiny model: {args.prompts} prompts in {shards} shards, "
        f"{args.train_steps} training steps per role, {args.threads} torch thread(s), "
        f"scheduler tick {args.scheduler_interval:g} s; {args.repeats} timed runs per side"
    )
    print(f"{'run':<10}{'wall s':>9}{'shards s':>10}{'outside s':>11}")
    for r in runs:
        print(f"{r.side:<10}{r.wall:>9.2f}{r.work:>10.2f}{r.outside:>11.2f}")
    median = {
        side: {
            key: statistics.median(getattr(r, key) for r in runs if r.side == side)
            for key in ("wall", "outside")
        }
        for side in ("local", "service")
    }
    local, service = median["local"], median["service"]
    for label, m in (("local executor, median:", local), ("service, median:", service)):
        print(f"{label:<27}{m['wall']:6.2f} s wall ({m['outside']:.2f} s outside the shards)")
    print(f"ratio service / local:     {service['wall'] / local['wall']:6.3f}  (target <= 1.15)")
    print(f"same pairs in every run:   {len(pairs) == 1}")


if __name__ == "__main__":
    main()
