"""Jobs per second through RQ for no-op jobs: the queue's own cost per shard, with spar's workers.

``--workers`` ``spar worker`` processes (SparWorker: SimpleWorker plus a heartbeat thread and the
``spar:worker:*`` status hash, JSON serializer) serve one queue of a private redis-server. Once
they are up and idle, ``--jobs`` ``workers.jobs.noop`` jobs are enqueued in one pipeline and the
clock runs until every one of them is finished. The same is then measured with RQ's own
``SimpleWorker`` (``rq worker``), for what spar's additions cost. Prints jobs per second end to end
(enqueue included) for both, and their ratio.

    python bench/queue_throughput.py [--jobs 500] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

from redis import Redis  # noqa: E402
from rq import Queue, Worker  # noqa: E402

from shared.runtime.queue import SERIALIZER  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from service_harness import private_redis  # noqa: E402


def drain(url: str, tmp: Path, jobs: int, n_workers: int, plain: bool) -> tuple[float, float, int]:
    """Start the workers, wait until all are idle, enqueue; returns (enqueue s, total s, failed)."""
    redis = Redis.from_url(url)
    redis.flushdb()  # our own redis-server (private_redis below), emptied between the two measurements
    env = os.environ | {"SPAR_REDIS_URL": url}
    command = (
        [str(BIN / "rq"), "worker", "-w", "rq.worker.SimpleWorker", "-S", "json", "-u", url, "actor"]
        if plain
        else [str(BIN / "spar"), "worker", "--role", "actor"]
    )
    logs = [open(tmp / f"worker-{plain}-{k}.log", "w") for k in range(n_workers)]  # noqa: SIM115
    workers = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT) for log in logs]
    try:
        queue = Queue("actor", connection=redis, serializer=SERIALIZER)
        deadline = time.monotonic() + 60
        while sum(w.get_state() == "idle" for w in Worker.all(queue=queue)) < n_workers:
            if time.monotonic() > deadline:  # the clock starts with every worker up and idle
                raise RuntimeError("workers did not start")
            time.sleep(0.1)
        started = time.perf_counter()
        enqueued_jobs = queue.enqueue_many(
            [Queue.prepare_data("workers.jobs.noop", kwargs={"payload": {"k": k}}) for k in range(jobs)]
        )
        enqueued = time.perf_counter() - started
        while queue.finished_job_registry.count + queue.failed_job_registry.count < len(enqueued_jobs):
            time.sleep(0.01)
        return enqueued, time.perf_counter() - started, queue.failed_job_registry.count
    finally:
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
        for log in logs:
            log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spar-queue-") as tmp, private_redis(Path(tmp)) as url:
        spar = drain(url, Path(tmp), args.jobs, args.workers, plain=False)
        plain = drain(url, Path(tmp), args.jobs, args.workers, plain=True)

    print(f"{args.jobs} no-op jobs (JSON serializer), {args.workers} worker processes, private redis-server")
    for label, (enqueued, total, failed) in (("SparWorker", spar), ("plain RQ SimpleWorker", plain)):
        rate = args.jobs / total
        print(
            f"{label:<22} {rate:6.0f} jobs/s end to end (enqueue in one pipeline {enqueued * 1000:.0f} ms, "
            f"all finished after {total:.2f} s, failed {failed})"
        )
    print(f"SparWorker / plain SimpleWorker throughput: {plain[1] / spar[1]:.2f}")


if __name__ == "__main__":
    main()
