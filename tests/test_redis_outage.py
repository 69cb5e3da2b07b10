"""Redis away: the scheduler says so once per change, a worker that never reached it names the URL."""

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
from workers.worker import display_url


def test_a_worker_that_never_reached_redis_names_the_url_and_the_fix(monkeypatch, caplog) -> None:
    """It keeps waiting (Redis may start later in the same rollout), but every line says where it
    looked (password hidden) and, as it never got through, how to fix the URL; SIGTERM still ends it."""
    url = f"redis://spar:s3cret@127.0.0.1:{free_port()}/0"
    waits: list[float] = []

    def stop_after_three(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 3:
            raise SystemExit(0)  # what SIGTERM does while the worker waits

    monkeypatch.setattr(worker_mod, "_sleep_or_stop", stop_after_three)
    with caplog.at_level(logging.WARNING, logger="spar.worker"), pytest.raises(SystemExit):
        worker_mod.run_worker("actor", url)
    tries = [r for r in caplog.records if getattr(r, "event", "") == "worker.reconnect"]
    assert len(tries) == 3 and waits == [1.0, 2.0, 4.0]
    shown = display_url(url)
    assert shown == f"redis://spar:***@127.0.0.1:{url.rsplit(':', 1)[1]}"
    for record in tries:
        assert record.url == shown and shown in record.hint and "SPAR_REDIS_URL" in record.hint
        assert "s3cret" not in record.getMessage() + record.url + record.hint + record.reason


def test_spar_worker_names_the_url_it_tries(monkeypatch, capsys) -> None:
    """Through the CLI: the URL given by --queue-url is the one logged."""
    monkeypatch.setattr(worker_mod, "_sleep_or_stop", lambda s: (_ for _ in ()).throw(SystemExit(0)))
    port = free_port()
    with pytest.raises(SystemExit):
        main(["worker", "--role", "actor", "--queue-url", f"redis://127.0.0.1:{port}/0"])
    err = capsys.readouterr().err
    assert f"redis://127.0.0.1:{port}/0" in err and "SPAR_REDIS_URL" in err


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
