"""Latency of ``GET /v1/runs/{id}`` under concurrent clients while a run is being worked on.

The API (uvicorn subprocess, its scheduler thread ticking), one worker per role and a private
redis-server are started on this machine; a run on the tiny model is created and, while its shards
are being computed, ``--clients`` asyncio clients (one ``httpx.AsyncClient`` each, keep-alive,
loopback) request the run's status back to back for ``--seconds`` seconds. Everything shares the
machine's cores: the numbers are those of a busy box, not of an idle API. Prints p50, p99 and max
latency, requests per second, errors, and how far the run got meanwhile.

    python bench/api_load.py [--clients 50] [--seconds 20] [--prompts 96]
    python bench/api_load.py --api-cpu 1 --load-cpu 0     # the pinned setup: the API has a core
    python bench/api_load.py --api-cpu 1 --load-cpu 0 --generator wrk

The generator matters: the Python clients (``httpx``) top out near 900 requests/s on one core, so
past that they measure themselves (Little's law: 50 clients / 900 per second = 55 ms each). ``wrk``
(C, Debian's package ``wrk``) keeps the same 50 connections busy at a small fraction of a core.

``--api-cpu``/``--load-cpu`` pin the API (uvicorn and its threads) to one core and this load
generator to another (``sched_setaffinity``, what ``taskset`` does); the workers running the
iteration share the load generator's core (``--workers-cpu`` moves them), so what is measured is
the API's own work, not its fight with the engines for a core. The private redis-server goes with
the workers too. Pinned, the workers also run at
nice 19, so that the load generator (the instrument) is never held up by them on its core: a
client that waits for a core would add that wait to the API's latency.
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


def _ms(text: str) -> float:
    """wrk's durations ('812.00us', '3.21ms', '1.02s') in milliseconds."""
    for unit, scale in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 6e4)):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * scale
    raise ValueError(f"not a wrk duration: {text!r}")


def run_wrk(url: str, args: argparse.Namespace) -> dict[str, float]:
    """The same load from ``wrk`` (one thread, ``--clients`` connections), pinned like the clients."""
    import re
    import shutil
    import subprocess

    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk (or use --generator httpx)")
    command = [
        wrk,
        "-t1",
        f"-c{args.clients}",
        f"-d{int(args.seconds)}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {TOKEN}",
        url,
    ]
    if args.load_cpu is not None:
        command = ["taskset", "-c", str(args.load_cpu), *command]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    cuts = dict(re.findall(r"^\s+(50|99)%\s+(\S+)\s*$", out, re.MULTILINE))  # wrk pads "1.37s "
    total = re.search(r"(\d+) requests in", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if not (latency and total and "50" in cuts and "99" in cuts):
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    return {
        "requests": int(total.group(1)),
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "rps": float(re.search(r"Requests/sec:\s+(\S+)", out).group(1)),
        "p50": _ms(cuts["50"]),
        "p99": _ms(cuts["99"]),
        "max": _ms(latency.group(1)),
    }


def redis_pids(url: str) -> list[int]:
    """The private redis-server(s) serving ``url`` (found by the port on their command line)."""
    import psutil

    port = url.rsplit(":", 1)[-1].split("/")[0]
    return [
        p.pid
        for p in psutil.process_iter(["name", "cmdline"])
        if "redis-server" in (p.info["name"] or "") and port in " ".join(p.info["cmdline"] or [])
    ]


def pin(pid: int, cpu: int | None) -> None:
    """Pin a process and all its threads to one core (children started later inherit it)."""
    if cpu is None:
        return
    for task in Path(f"/proc/{pid if pid else os.getpid()}/task").iterdir():
        os.sched_setaffinity(int(task.name), {cpu})


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
    parser.add_argument("--generator", choices=["httpx", "wrk"], default="httpx")
    parser.add_argument(
        "--scheduler-interval",
        type=float,
        default=1.0,
        help="seconds between the API's scheduler ticks (the product's default; the tests use 0.3)",
    )
    parser.add_argument("--api-cpu", type=int, help="pin the API process to this core")
    parser.add_argument("--load-cpu", type=int, help="pin this load generator to this core")
    parser.add_argument("--workers-cpu", type=int, help="pin the workers here (default: --load-cpu)")
    args = parser.parse_args()
    workers_cpu = args.workers_cpu if args.workers_cpu is not None else args.load_cpu

    from workers.models.tiny import tiny_model_cached

    model = tiny_model_cached(CACHE)
    prompts = variant_prompts(args.prompts)
    body = tiny_run_body("load", seed=3, shard_size=8, responses=4, votes=5, new_tokens=(24, 64, 64))
    with tempfile.TemporaryDirectory(prefix="spar-api-load-") as tmp:
        root = data_root(Path(tmp), model, prompts)
        with private_redis(Path(tmp)) as url:
            stack = Stack(
                root=root, redis_url=url, env_extra={"SPAR_SCHEDULER_INTERVAL": str(args.scheduler_interval)}
            )
            try:
                stack.start_api()
                stack.start_workers()
                pin(stack.api.pid, args.api_cpu)
                for _, worker in stack.workers:
                    pin(worker.pid, workers_cpu)
                    if args.api_cpu is not None:  # the instrument must not wait for the engines
                        os.setpriority(os.PRIO_PROCESS, worker.pid, 19)
                pin(0, args.load_cpu)
                for pid in redis_pids(url):  # the store is the workers' and the API's: not the API's core
                    pin(pid, workers_cpu)
                with stack.client() as c:
                    created = c.post("/v1/runs", json=body)
                    created.raise_for_status()
                    run_id = created.json()["id"]
                    for _ in range(20):  # warm the route (imports, first file reads)
                        c.get(f"/v1/runs/{run_id}").raise_for_status()
                    while c.get(f"/v1/runs/{run_id}").json()["status"] == "queued":  # until work starts
                        time.sleep(0.1)
                before = progress(stack, run_id)
                if args.generator == "wrk":
                    result = run_wrk(stack.url + f"/v1/runs/{run_id}", args)
                else:
                    latencies, errors, elapsed = asyncio.run(
                        load(stack.url, f"/v1/runs/{run_id}", args.clients, args.seconds)
                    )
                after = progress(stack, run_id)
            finally:
                stack.close()

    if args.generator == "wrk":
        print(f"GET /v1/runs/{{id}}: {args.clients} connections (wrk, one thread) for {args.seconds:.0f} s")
        print(f"run during the load: {before}  ->  {after}")
        print(
            f"pinned: API on core {args.api_cpu}, load generator on {args.load_cpu}, workers on {workers_cpu}"
        )
        print(f"requests: {result['requests']}, errors: {result['errors']}")
        print(f"throughput: {result['rps']:.1f} requests/s")
        print(f"latency: p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms, max {result['max']:.1f} ms")
        return
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"GET /v1/runs/{{id}}: {args.clients} concurrent clients for {elapsed:.1f} s, loopback, one uvicorn"
    )
    print(f"run during the load: {before}  ->  {after}")
    if args.api_cpu is not None or args.load_cpu is not None:
        print(
            f"pinned: API on core {args.api_cpu}, load generator on {args.load_cpu}, workers on {workers_cpu}"
        )
    print(f"requests: {len(latencies)}, errors: {len(errors)}{f' ({sorted(set(errors))})' if errors else ''}")
    print(f"throughput: {len(latencies) / elapsed:.1f} requests/s")
    p50, p99, worst = cuts[49] * 1000, cuts[98] * 1000, max(latencies) * 1000
    print(f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms")


if __name__ == "__main__":
    main()
