"""Scheduler tick time for one run of many shards: this checkout against a baseline revision.

A run of ``--prompts`` prompts at ``shard_size: 1`` (5,000 shards by default) is created on a
private redis-server; the scheduler's first tick enqueues every shard; then the clock runs over
``--ticks`` further ticks while every job waits in its queue (no worker: the steady state of a big
stage), and over one cancel of the run. The same is done with ``services/scheduler.py`` as it is at
``--baseline`` (default ``main``; loaded from git into a module of its own, everything else from
this checkout), on an emptied Redis and a fresh run. Prints per-tick milliseconds (median, max) and
the cancel time for both, and their ratios.

    python bench/scheduler_tick.py [--prompts 5000] [--ticks 10] [--baseline main]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from redis import Redis  # noqa: E402
from service_harness import private_redis  # noqa: E402

from services.runs import create_run  # noqa: E402
from shared.config import RunConfig  # noqa: E402
from shared.runtime.artifacts import RunPaths  # noqa: E402


def baseline_module(revision: str, tmp: Path) -> ModuleType:
    """``services/scheduler.py`` at ``revision``, imported under another name."""
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{revision}:services/scheduler.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    file = tmp / "baseline_scheduler.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location("baseline_scheduler", file)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_scheduler"] = module
    spec.loader.exec_module(module)
    return module


def measure(module: ModuleType, url: str, root: Path, prompts: int, ticks: int, label: str) -> dict:
    redis = Redis.from_url(url)
    redis.flushdb()
    data = root / label
    data.mkdir()
    (data / "prompts.jsonl").write_text("".join(f'{{"prompt": "p{k}"}}\n' for k in range(prompts)))
    config = RunConfig.model_validate(
        {
            "name": f"bench-{label}",
            "prompts": str(data / "prompts.jsonl"),
            "shard_size": 1,
            "actor": {"model": "tiny"},
            "refiner": {"model": "tiny"},
            "stages": ["sample", "judge", "refine", "assemble"],
        }
    )
    paths: RunPaths = create_run(config, data / "runs")
    scheduler = module.Scheduler(redis)
    scheduler.register(paths)
    started = time.perf_counter()
    scheduler.tick()  # enqueues every shard
    first = time.perf_counter() - started
    queued = redis.llen("rq:queue:actor")
    times = []
    for _ in range(ticks):
        started = time.perf_counter()
        scheduler.tick()
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    scheduler.cancel(paths.run_id, paths)
    cancel = time.perf_counter() - started
    return {"first": first, "ticks": times, "cancel": cancel, "queued": queued}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5000)
    parser.add_argument("--ticks", type=int, default=10)
    parser.add_argument("--baseline", default="main")
    args = parser.parse_args()
    import services.scheduler as current

    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp) / "redis") as url:
        root = Path(tmp)
        baseline = baseline_module(args.baseline, root)
        results = {
            args.baseline: measure(baseline, url, root, args.prompts, args.ticks, "base"),
            "this checkout": measure(current, url, root, args.prompts, args.ticks, "new"),
        }
    print(f"one run of {args.prompts} shards, {args.ticks} ticks with every job queued (no worker)")
    header = ("scheduler", "jobs queued", "first tick", "tick median", "tick max", "cancel")
    print("{:>16} {:>12} {:>11} {:>12} {:>9} {:>8}".format(*header))
    for name, r in results.items():
        median, worst = statistics.median(r["ticks"]) * 1000, max(r["ticks"]) * 1000
        print(
            f"{name:>16} {r['queued']:>12} {r['first'] * 1000:>9.0f}ms {median:>10.1f}ms "
            f"{worst:>7.1f}ms {r['cancel'] * 1000:>6.0f}ms"
        )
    base, new = results[args.baseline], results["this checkout"]
    print(
        f"steady tick {statistics.median(base['ticks']) / statistics.median(new['ticks']):.0f}x faster, "
        f"cancel {base['cancel'] / new['cancel']:.0f}x faster"
    )


if __name__ == "__main__":
    main()
