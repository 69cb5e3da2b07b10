"""Redis away: the scheduler says so once per change, a worker that never reached it exits naming the URL."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from redis import Redis
from service_harness import free_port

from services.cli import main
from services.scheduler import Scheduler
from workers import worker as worker_mod
from workers.worker import RedisUnreachableAtStart, display_url, wait_for_redis_at_start


def test_a_worker_that_never_reached_redis_names_the_url_and_the_fix(caplog) -> None:
    url = f"redis://spar:s3cret@127.0.0.1:{free_port()}/0"
    slept: list[float] = []
    with caplog.at_level(logging.WARNING, logger="spar.worker"):
        with pytest.raises(RedisUnreachableAtStart) as failed:
            wait_for_redis_at_start(url, backoff=(1.0, 2.0), sleep=slept.append)
    message = str(failed.value)
    assert display_url(url) in message and "s3cret" not in message and "SPAR_REDIS_URL" in message
    assert failed.value.exit_code == 3 and slept == [1.0, 2.0]
    tries = [r for r in caplog.records if getattr(r, "event", "") == "worker.redis_unreachable"]
    assert [r.attempt for r in tries] == [1, 2] and all(r.url == display_url(url) for r in tries)
    assert all("s3cret" not in r.getMessage() + str(r.url) for r in tries)


def test_spar_worker_exits_non_zero_when_redis_is_not_there(monkeypatch, capsys) -> None:
    monkeypatch.setattr(worker_mod, "START_BACKOFF_S", (0.01,))
    port = free_port()
    code = main(["worker", "--role", "actor", "--queue-url", f"redis://127.0.0.1:{port}/0"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 3 and f"redis://127.0.0.1:{port}/0" in err and "start Redis first" in err


def test_a_reachable_redis_passes_at_once(redis_server) -> None:
    wait_for_redis_at_start(redis_server.url, backoff=(), sleep=lambda s: pytest.fail("no wait"))


def test_the_scheduler_logs_redis_down_and_up_once_each(redis_server, caplog) -> None:
    scheduler = Scheduler(Redis.from_url(redis_server.url, socket_timeout=1, socket_connect_timeout=1))
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.serve, args=(stop, 0.05), daemon=True)
    with caplog.at_level(logging.INFO, logger="spar.scheduler"):
        thread.start()
        time.sleep(0.5)
        redis_server.stop("kill")
        time.sleep(1.5)  # some 20 ticks without Redis
        redis_server.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            getattr(r, "event", "") == "scheduler.redis_up" for r in caplog.records
        ):
            time.sleep(0.1)
        stop.set()
        thread.join(timeout=10)
    events = [getattr(r, "event", "") for r in caplog.records]
    assert events.count("scheduler.redis_down") == 1, events
    assert events.count("scheduler.redis_up") == 1, events
    up = next(r for r in caplog.records if getattr(r, "event", "") == "scheduler.redis_up")
    assert up.down_s >= 1.0
