"""Latency of ``GET /v1/runs/{id}`` under concurrent clients while a run is being worked on.

The API (uvicorn subprocess, its scheduler thread ticking), one worker per role and a private
redis-server are started on this machine; a run on the tiny model is created and, while its shards
are being computed, ``--clients`` asyncio clients (one ``httpx.AsyncClient`` each, keep-alive,
loopback) request the run's status back to back for ``--seconds`` seconds. Everything shares the
machine's cores: the numbers are those of a busy box, not of an idle API. Prints p50, p99 and max
latency, requests per second, errors, and how far the run got meanwhile.

    python bench/api_load.py [--clients 50] [--seconds 20] [--prompts 96]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402
from service_harness import (  # noqa: E402
    TOKEN,
    Stack,
    data_root,
    private_redis,
    tiny_run_body,
    variant_prompts,
)

CACHE = REPO / ".cache" / "models"


async def client_loop(
    base_url: str, path: str, until: float, latencies: list[float], errors: list[str]
) -> None:
    """One client: request ``path`` back to back until ``until`` (perf_counter time)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=30) as client:
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                response = await client.get(path)
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                continue
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                errors.append(str(response.status_code))


async def load(
    base_url: str, path: str, clients: int, seconds: float
) -> tuple[list[float], list[str], float]:
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(client_loop(base_url, path, until, latencies, errors) for _ in range(clients)))
    return latencies, errors, time.perf_counter() - started


def progress(stack: Stack, run_id: str) -> str:
    with stack.client() as c:
        view = c.get(f"/v1/runs/{run_id}").json()
    done = sum(p["done"] for p in view["progress"])
    total = sum(p["total"] for p in view["progress"])
    return f"{view['status']}, stage {view['stage']}, {done}/{total} shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--prompts", type=int, default=96, help="enough work to outlast the load")
    args = parser.parse_args()

    from workers.models.tiny import tiny_model_cached

    model = tiny_model_cached(CACHE)
    prompts = variant_prompts(args.prompts)
    body = tiny_run_body("load", seed=3, shard_size=8, responses=4, votes=5, new_tokens=(24, 64, 64))
    with tempfile.TemporaryDirectory(prefix="spar-api-load-") as tmp:
        root = data_root(Path(tmp), model, prompts)
        with private_redis(Path(tmp)) as url:
            stack = Stack(root=root, redis_url=url)
            try:
                stack.start_api()
                stack.start_workers()
                with stack.client() as c:
                    created = c.post("/v1/runs", json=body)
                    created.raise_for_status()
                    run_id = created.json()["id"]
                    for _ in range(20):  # warm the route (imports, first file reads)
                        c.get(f"/v1/runs/{run_id}").raise_for_status()
                    while c.get(f"/v1/runs/{run_id}").json()["status"] == "queued":  # until work starts
                        time.sleep(0.1)
                before = progress(stack, run_id)
                latencies, errors, elapsed = asyncio.run(
                    load(stack.url, f"/v1/runs/{run_id}", args.clients, args.seconds)
                )
                after = progress(stack, run_id)
            finally:
                stack.close()

    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"GET /v1/runs/{{id}}: {args.clients} concurrent clients for {elapsed:.1f} s, loopback, one uvicorn"
    )
    print(f"run during the load: {before}  ->  {after}")
    print(f"requests: {len(latencies)}, errors: {len(errors)}{f' ({sorted(set(errors))})' if errors else ''}")
    print(f"throughput: {len(latencies) / elapsed:.1f} requests/s")
    p50, p99, worst = cuts[49] * 1000, cuts[98] * 1000, max(latencies) * 1000
    print(f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")


if __name__ == "__main__":
    main()
