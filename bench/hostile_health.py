"""``/healthz`` latency while the worst request of each kind is in flight (issue 23).

The API as ``spar api`` serves it (uvicorn, ``services/api/server.py`` options) runs in a thread of
this process on a private redis-server, scheduler off. For each kind below, clients keep sending the
worst request of that kind for ``--seconds`` while another client polls ``/healthz`` every 10 ms;
prints the p50, p99 and max of those polls per kind (the baseline: no load).

Kinds: a 0.96 MB body whose ``stages`` is a list of 480,000 zeros; 90,000 unknown keys; a 1 MB
header; a 1 MB URL; 50 clients sending a header one byte at a time; a run created from a
1,000,000-line prompt file (``shard_size`` 1000).

    python bench/hostile_health.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from service_harness import free_port, private_redis  # noqa: E402

from services.api import Settings, create_app  # noqa: E402
from services.api.server import server_options  # noqa: E402

TOKEN = "bench-hostile-token-0123456789abcdef0123"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
BASE = {"name": "h", "prompts": "prompts.jsonl", "actor": {"model": "tiny"}, "refiner": {"model": "tiny"}}


def raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(data)
            while s.recv(65536):
                pass
        except OSError:
            pass


def slow_headers(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while not stop.is_set():
                s.sendall(b"a")
                time.sleep(0.2)
        except OSError:
            pass


def poll(url: str, seconds: float) -> list[float]:
    out = []
    with httpx.Client() as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            started = time.perf_counter()
            client.get(f"{url}/healthz", timeout=30)
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(0.01)
    return out


def under_load(
    url: str, seconds: float, load: Callable[[threading.Event], None], clients: int = 2
) -> list[float]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            load(stop)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    try:
        return poll(url, seconds)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, private_redis(Path(tmp) / "redis") as redis_url:
        root = Path(tmp) / "data"
        root.mkdir()
        (root / "prompts.jsonl").write_text('{"prompt": "p"}\n')
        with (root / "million.jsonl").open("w") as f:
            f.writelines(f'{{"prompt": "prompt number {k}"}}\n' for k in range(1_000_000))
        settings = Settings(api_token=TOKEN, scheduler=False, redis_url=redis_url, data_root=root)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host="127.0.0.1",
                port=port,
                log_level="error",
                **server_options(settings),
            )
        )
        threading.Thread(target=server.run, daemon=True).start()
        while not server.started:
            time.sleep(0.05)
        url = f"http://127.0.0.1:{port}"
        stages = json.dumps(BASE | {"stages": [0] * 480_000}, separators=(",", ":")).encode()
        keys = json.dumps(BASE | {f"{i:x}": 0 for i in range(90_000)}, separators=(",", ":")).encode()
        million = json.dumps(BASE | {"prompts": "million.jsonl", "shard_size": 1000}).encode()

        def post(body: bytes) -> Callable[[threading.Event], None]:
            return lambda _: httpx.post(f"{url}/v1/runs", content=body, headers=AUTH, timeout=120)

        kinds: dict[str, tuple[Callable[[threading.Event], None], int]] = {
            "stages list of 480,000 items (0.96 MB)": (post(stages), 2),
            "90,000 unknown keys": (post(keys), 2),
            "1 MB header": (
                lambda _: raw(port, b"GET / HTTP/1.1\r\nX: " + b"a" * 1_000_000 + b"\r\n\r\n"),
                2,
            ),
            "1 MB URL": (lambda _: raw(port, b"GET /?" + b"q" * 1_000_000 + b" HTTP/1.1\r\n\r\n"), 2),
            "50 slow-header clients": (lambda stop: slow_headers(port, stop), 50),
            "run from a 1e6-line prompt file": (post(million), 1),
        }
        rows = [("no load", poll(url, args.seconds))]
        for name, (load, clients) in kinds.items():
            rows.append((name, under_load(url, args.seconds, load, clients)))
        server.should_exit = True
    print(f"/healthz latency (ms), polled every 10 ms for {args.seconds:g} s per kind")
    print(f"{'worst request in flight':>40} {'polls':>6} {'p50':>7} {'p99':>7} {'max':>7}")
    for name, times in rows:
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{name:>40} {len(times):>6} {statistics.median(times):>7.1f} {p99:>7.1f} {max(times):>7.1f}")


if __name__ == "__main__":
    main()
