"""Real processes for the service tests: a Redis server, the API (uvicorn) and workers per role.

Each test starts its own ``redis-server`` on a free loopback port (:class:`RedisServer`) and gets its
own data root; processes are started with ``spar`` and killed at the end. Nothing here ever touches a
Redis it did not start (no flush of a shared server, whatever database number).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from redis import Redis

from shared.runtime.queue import QUEUES

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdef0123456789abcdef"  # >= 32 chars
PROMPTS = [
    "Write a haiku about rain. Use exactly three lines.",
    "List three fruits in lowercase, separated by commas.",
    "Explain gravity in one sentence without commas.",
    "Give two tips for sleeping well as a numbered list.",
]
SEARCH_STAGES = ["sample", "judge", "refine", "assemble"]


def variant_prompts(n: int) -> list[str]:
    """``n`` distinct prompts built from :data:`PROMPTS` (for runs that need more work)."""
    return [f"{PROMPTS[i % len(PROMPTS)]} Variant {i // len(PROMPTS)}." for i in range(n)]


def tiny_run_body(
    name: str,
    seed: int,
    shard_size: int,
    *,
    responses: int = 3,
    votes: int = 3,
    new_tokens: tuple[int, int, int] = (20, 40, 48),
    train_steps: int | None = None,
    model: str = "models/tiny",
    **overrides: object,
) -> dict:
    """A run config on the data root's tiny model (``models/tiny``, ``prompts.jsonl``), as JSON.

    ``new_tokens``: sample, judge and refine limits. ``train_steps`` adds both trainings with that
    many steps; without it the run has the search stages only. ``model``: another model folder
    for both roles.
    """
    sample_tokens, judge_tokens, search_tokens = new_tokens
    body: dict = {
        "name": name,
        "seed": seed,
        "prompts": "prompts.jsonl",
        "shard_size": shard_size,
        "actor": {"model": model, "hf": {"batch_size": 16}},
        "refiner": {"model": model, "hf": {"batch_size": 16}},
        "sample": {"num_responses": responses, "max_new_tokens": sample_tokens},
        "judge": {"votes": votes, "max_new_tokens": judge_tokens},
        "search": {"branching": 2, "beam": 1, "max_depth": 2, "max_new_tokens": search_tokens},
    }
    if train_steps is None:
        body["stages"] = list(SEARCH_STAGES)
    else:
        train = {
            "max_steps": train_steps,
            "batch_size": 2,
            "grad_accum": 1,
            "max_length": 256,
            "learning_rate": 1e-4,
        }
        body |= {"train_actor": train, "train_refiner": dict(train)}
    return body | overrides


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """A data root, a Redis URL, and the spar processes started on them."""

    root: Path
    redis_url: str
    env_extra: dict[str, str] = field(default_factory=dict)
    api: subprocess.Popen | None = None
    port: int = 0
    workers: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return (
            os.environ
            | {
                "SPAR_REDIS_URL": self.redis_url,
                "SPAR_API_TOKEN": TOKEN,
                "SPAR_DATA_ROOT": str(self.root),
                "SPAR_CACHE_DIR": str(self.root / "cache"),
                "SPAR_SCHEDULER_INTERVAL": "0.3",
                "SPAR_RETRY_INTERVALS": "1,1,1",
                "HF_HUB_OFFLINE": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "OMP_NUM_THREADS": "1",
                # the processes run THIS checkout's code (a worktree beside the one the `spar`
                # script was installed from included), as the test process itself does
                "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            }
            | self.env_extra
        )

    def _log(self, name: str):
        path = self.root / "logs" / f"{name}-{len(self.logs)}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.logs.append(path)
        return path.open("w")

    def start_api(self) -> None:
        self.port = self.port or free_port()
        self.api = subprocess.Popen(
            [str(BIN / "spar"), "api", "--port", str(self.port)],
            env=self.env,
            stdout=self._log("api"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120  # generous: a loaded 2-core machine imports slowly
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"API did not start; see {self.logs[-1]}: {self.logs[-1].read_text()[-2000:]}")

    def stop_api(self, sig: int = signal.SIGTERM) -> None:
        if self.api is not None:
            self.api.send_signal(sig)
            self.api.wait(timeout=30)
            self.api = None

    def start_worker(self, role: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(
            [str(BIN / "spar"), "worker", "--role", role, "--heartbeat-ttl", "3"],
            env=self.env | (env or {}),
            stdout=self._log(f"worker-{role}"),
            stderr=subprocess.STDOUT,
        )
        self.workers.append((role, proc))
        return proc

    def start_workers(self) -> None:
        """One worker per role (actor, refiner, train): what a run needs."""
        for role in QUEUES:
            self.start_worker(role)

    def stop_workers(self) -> None:
        for _, proc in self.workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        self.workers = []

    def close(self) -> None:
        self.stop_workers()
        if self.api is not None:
            self.api.kill()
            self.api.wait(timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def wait_for(
        self, run_id: str, statuses=("succeeded", "failed", "cancelled"), timeout: float = 300
    ) -> dict:
        deadline = time.monotonic() + timeout
        last: dict = {}
        with self.client() as c:
            while time.monotonic() < deadline:
                try:
                    last = c.get(f"/v1/runs/{run_id}").json()
                except httpx.HTTPError:
                    time.sleep(0.5)
                    continue
                if last.get("status") in statuses:
                    return last
                time.sleep(0.5)
        raise TimeoutError(
            f"run {run_id} still {last.get('status')} after {timeout}s: {last}\n{self.tail_logs()}"
        )

    def finish_run(self, body: dict, timeout: float = 3600) -> tuple[dict, float]:
        """POST ``body`` as a run and wait for its end: its last view, and when it was posted (epoch
        seconds). Raises with the services' logs unless the run succeeded (the benchmarks' runs)."""
        with self.client() as c:
            posted_at = time.time()
            created = c.post("/v1/runs", json=body)
            created.raise_for_status()
            run_id = created.json()["id"]
        view = self.wait_for(run_id, timeout=timeout)
        if view["status"] != "succeeded":
            raise RuntimeError(f"run {run_id} ended {view['status']}: {view['error']}\n{self.tail_logs()}")
        return view, posted_at

    def tail_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in self.logs)


def data_root(tmp: Path, tiny_model: Path, prompts: list[str]) -> Path:
    root = tmp / "data"
    (root / "models").mkdir(parents=True)
    shutil.copytree(tiny_model, root / "models" / "tiny")
    (root / "prompts.jsonl").write_text("".join(f'{{"prompt": "{p}"}}\n' for p in prompts))
    return root


def wait_for_redis(port: int, timeout: float = 20) -> None:
    """Return once a just-started redis-server on ``port`` answers; raise its error after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            Redis(port=port, socket_timeout=1).ping()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class RedisServer:
    """A ``redis-server`` of our own on a free loopback port, with its data in ``folder``.

    ``appendonly``: persist every write to an append-only file (fsync every second), as deployed
    (docker-compose and the kustomize base run Redis with ``--appendonly yes``), so a drill can kill
    it and start it again on the same port and folder and find the queues and runs where they were.
    """

    folder: Path
    appendonly: bool = True
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        log = (self.folder / "redis.log").open("a")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
            + ["--appendonly", "yes" if self.appendonly else "no", "--save", ""],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for_redis(self.port)
        return self

    def stop(self, how: str = "term") -> None:
        """Stop the server: ``kill`` (SIGKILL: what the AOF last fsynced survives), ``shutdown``
        (Redis's SHUTDOWN: the AOF is flushed first) or ``term`` (SIGTERM, a clean stop)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if how == "kill":
                self.proc.kill()
            elif how == "shutdown":
                try:
                    Redis(port=self.port, socket_timeout=5).shutdown(nosave=True)
                except Exception:  # noqa: BLE001  (SHUTDOWN closes the connection: redis-py may raise)
                    pass
            else:
                self.proc.send_signal(signal.SIGCONT)  # never leave it stopped by a pause drill
                self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc = None

    def restart(self, how: str = "kill", down_s: float = 0.0) -> None:
        """Stop it (``how``), stay down ``down_s`` seconds, and start it on the same port and folder."""
        self.stop(how)
        time.sleep(down_s)
        self.start()


@contextmanager
def private_redis(folder: Path, appendonly: bool = False) -> Iterator[str]:
    """A redis-server of our own on a free port (no persistence by default): nobody else's data is touched."""
    server = RedisServer(folder, appendonly=appendonly).start()
    try:
        yield server.url
    finally:
        server.stop()
