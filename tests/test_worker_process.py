"""Worker processes and their liveness probe when Redis is away: backoff, clean stop, no needless restart."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis
from service_harness import RedisServer, free_port

from shared.runtime.queue import worker_key

SPAR = Path(sys.executable).parent / "spar"


def test_a_worker_without_redis_backs_off_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(SPAR), "worker", "--role", "actor", "--queue-url", f"redis://127.0.0.1:{free_port()}/0"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"SPAR_CACHE_DIR": str(tmp_path / "cache")},
        )
        try:
            deadline = time.monotonic() + 60
            while log.read_text().count('"worker.reconnect"') < 2 and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
            text = log.read_text()
            assert text.count('"worker.reconnect"') >= 2, text
            assert '"delay_s": 1.0' in text and '"delay_s": 2.0' in text  # backoff grows
            assert "redis unreachable" in text
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    assert "Traceback" not in log.read_text()


def test_a_bad_redis_timeout_setting_is_named(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(SPAR), "worker", "--role", "actor", "--queue-url", f"redis://127.0.0.1:{free_port()}/0"],
        capture_output=True,
        text=True,
        env=os.environ | {"SPAR_WORKER_REDIS_TIMEOUT": "soon", "SPAR_CACHE_DIR": str(tmp_path / "c")},
        timeout=60,
    )
    assert done.returncode == 2
    assert "SPAR_WORKER_REDIS_TIMEOUT" in done.stderr + done.stdout and "Traceback" not in done.stderr


def probe(url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SPAR), "worker-probe", "--role", "refiner", "--queue-url", url],
        capture_output=True,
        text=True,
        env=os.environ | {"SPAR_CACHE_DIR": str(tmp_path / "c")},
        timeout=60,
    )


def test_the_liveness_probe_fails_without_a_worker_and_passes_when_redis_is_away(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    url = redis_server.url
    missing = probe(url, tmp_path)
    assert missing.returncode == 1 and "no live refiner worker" in missing.stderr
    Redis.from_url(url).hset(
        worker_key("refiner-x-1"), mapping={"role": "refiner", "host": socket.gethostname()}
    )
    assert probe(url, tmp_path).returncode == 0
    # Redis down: restarting the worker cannot help, so liveness holds (it is reconnecting)
    away = probe(f"redis://127.0.0.1:{free_port()}/0", tmp_path)
    assert away.returncode == 0 and "redis unreachable" in away.stderr and "Traceback" not in away.stderr


def test_a_retry_scheduled_after_a_redis_stall_runs_within_seconds(
    private_redis: tuple[subprocess.Popen, int], tmp_path: Path
) -> None:
    """A stall that ends the worker's loop also stops its scheduler (which moves scheduled jobs --
    our retries -- to their queue), whose lock release fails while Redis is away: the next loop's
    scheduler could not take the lock until it expired (61 s), and no retry ran for that minute.
    The worker must free the old lock when Redis is back, so scheduling resumes at once."""
    from datetime import timedelta

    from rq import Queue
    from rq.job import JobStatus

    from shared.runtime.queue import SERIALIZER

    server, port = private_redis
    url = f"redis://127.0.0.1:{port}/0"
    log = tmp_path / "worker.log"
    redis = Redis.from_url(url, socket_timeout=5)
    with log.open("w") as out:
        worker = subprocess.Popen(
            [str(SPAR), "worker", "--role", "actor", "--queue-url", url, "--heartbeat-ttl", "3"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=os.environ | {"SPAR_CACHE_DIR": str(tmp_path / "c"), "SPAR_WORKER_REDIS_TIMEOUT": "1"},
        )
    try:
        lock = "rq:scheduler-lock:actor"
        deadline = time.monotonic() + 60
        while not redis.exists(lock):
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.2)
        server.send_signal(signal.SIGSTOP)  # longer than every Redis timeout of the worker
        time.sleep(14)
        server.send_signal(signal.SIGCONT)
        queue = Queue("actor", connection=redis, serializer=SERIALIZER)
        job = queue.enqueue_in(timedelta(seconds=1), "workers.jobs.noop", kwargs={"payload": {}})
        deadline = time.monotonic() + 20
        while job.get_status(refresh=True) != JobStatus.FINISHED:
            assert time.monotonic() < deadline, f"the scheduled job never ran\n{log.read_text()}"
            time.sleep(0.2)
        text = log.read_text()
        assert '"worker.reconnect"' in text and '"worker.scheduler_released"' in text, text
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()
