"""spar's processes against a Redis locked as deployed: the ACL rules of deploy/base/redis.yaml.

A private redis-server is started with exactly the ``--user`` rules of the rendered kustomization
(the compose file has the same ones: tests/test_deploy.py), the password substituted. With the
password in the URL a worker runs jobs (and its spawned RQ scheduler process, which connects on its
own, moves a scheduled job to the queue), the run scheduler ticks and the worker probe passes;
without it every connection is refused, and a worker given such a URL says why and keeps retrying
rather than crash. About 15 s.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from kustomize_render import build
from redis import Redis
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from rq import Queue
from rq.job import JobStatus
from service_harness import free_port

from shared.runtime.queue import SERIALIZER

ROOT = Path(__file__).resolve().parents[1]
SPAR = Path(sys.executable).parent / "spar"
PASSWORD = "0123456789abcdef" * 4  # a test value, hex like `openssl rand -hex 32`


def deployed_acl_args() -> list[str]:
    """The ``--user ...`` arguments of the rendered Redis StatefulSet, with the password filled in."""
    docs = build(ROOT / "deploy" / "base")
    (statefulset,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "redis"]
    args = statefulset["spec"]["template"]["spec"]["containers"][0]["args"]
    acl = args[args.index("--user") :]
    assert "$(REDIS_PASSWORD)" in " ".join(acl)
    return [a.replace("$(REDIS_PASSWORD)", PASSWORD) for a in acl]


@pytest.fixture()
def locked_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server of our own on a free loopback port, locked with the deployed ACL rules."""
    port = free_port()
    log = (tmp_path / "redis.log").open("w")
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""]
        + deployed_acl_args(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_until_up(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def wait_until_up(port: int, timeout: float = 20) -> None:
    """Return once the server answers: a refusal to log in is an answer."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            Redis(port=port, socket_timeout=1).ping()
            raise AssertionError("the locked Redis answered without a password")
        except AuthenticationError:
            return
        except RedisConnectionError:  # not listening yet
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def url(port: int, password: str | None = PASSWORD) -> str:
    return f"redis://spar:{password}@127.0.0.1:{port}/0" if password else f"redis://127.0.0.1:{port}/0"


def test_without_the_password_every_connection_is_refused(locked_redis: int) -> None:
    with pytest.raises(AuthenticationError):
        Redis.from_url(url(locked_redis, None), socket_timeout=5).ping()
    with pytest.raises(AuthenticationError):  # the default user is off, whatever its password
        Redis.from_url(f"redis://default:{PASSWORD}@127.0.0.1:{locked_redis}/0").ping()
    with pytest.raises(AuthenticationError):
        Redis.from_url(url(locked_redis, "wrong" + PASSWORD[5:])).ping()
    spar = Redis.from_url(url(locked_redis))
    assert spar.ping()
    for admin in (lambda: spar.flushall(), lambda: spar.config_get("dir"), lambda: spar.acl_list()):
        with pytest.raises((NoPermissionError, ResponseError), match="permission"):
            admin()


def test_a_worker_its_scheduler_the_run_scheduler_and_the_probe_log_in(
    locked_redis: int, tmp_path: Path
) -> None:
    from services.scheduler import Scheduler

    env = os.environ | {"SPAR_CACHE_DIR": str(tmp_path / "c"), "SPAR_REDIS_URL": url(locked_redis)}
    redis = Redis.from_url(url(locked_redis), socket_timeout=5)
    Scheduler(redis).tick()  # registry cleanup, run registry (Lua script): all permitted
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [str(SPAR), "worker", "--role", "actor", "--heartbeat-ttl", "3"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        queue = Queue("actor", connection=redis, serializer=SERIALIZER)
        now = queue.enqueue("workers.jobs.noop")
        # run by the worker's RQ scheduler, a spawned process that logs in on its own
        later = queue.enqueue_in(timedelta(seconds=1), "workers.jobs.noop")
        deadline = time.monotonic() + 90
        while {now.get_status(refresh=True), later.get_status(refresh=True)} != {JobStatus.FINISHED}:
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.3)
        assert redis.exists("rq:scheduler-lock:actor")
        probe = subprocess.run(
            [str(SPAR), "worker-probe", "--role", "actor"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert probe.returncode == 0, probe.stderr
        assert PASSWORD not in log.read_text(), "the password was logged"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_a_worker_without_the_password_says_so_and_retries(locked_redis: int, tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [str(SPAR), "worker", "--role", "actor", "--queue-url", url(locked_redis, None)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"SPAR_CACHE_DIR": str(tmp_path / "c")},
        )
    try:
        deadline = time.monotonic() + 60
        while log.read_text().count('"worker.reconnect"') < 2:
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.2)
        assert "Authentication required" in log.read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
