"""The contract between the scheduler and the workers: queues, job ids, payloads, Redis keys.

- One RQ queue per role: ``actor`` (sampling), ``refiner`` (judging, tree search, inference-time
  refinement), ``train`` (assembly, DPO, RFT, stage-0 SFT). Redis holds them as ``rq:queue:<name>``
  (what a KEDA ScaledObject watches).
- Jobs carry JSON only (RQ's ``JSONSerializer``), never pickles: the payload of a shard job is a
  ``StageSpec`` as a dict, and the function is named by its dotted path.
- Job ids are deterministic, ``{run}-{iter}-{stage}-{shard}``, so enqueuing twice is a no-op and the
  scheduler can find a shard's job after a restart.
"""

from __future__ import annotations

from rq.serializers import JSONSerializer

from shared.names import ID_CHARS, is_id
from shared.stages import STAGE_TABLE, QueueRole

QueueName = QueueRole
QUEUES: tuple[QueueName, ...] = ("actor", "refiner", "train")

STAGE_QUEUE: dict[str, QueueName] = {s.name: s.queue for s in STAGE_TABLE}
"""The queue each stage's shards go to (the stage table's ``queue``)."""

RUN_SHARD = "workers.jobs.run_shard"
REFINE_ONE = "workers.jobs.refine_one"

SERIALIZER = JSONSerializer

from .settings import DEFAULT_REDIS_URL  # noqa: E402,F401  (the queues' default, named in one place)

WAKE_CHANNEL = "spar:scheduler:wake"
"""Workers publish here when a shard is done, so the scheduler advances at once, not at its next tick."""


def redis_url() -> str:
    from .settings import settings

    return settings().redis_url


def job_id(run_id: str, iteration: int, stage: str, shard: int) -> str:
    """A shard's job id; the run id follows the one name rule of ``shared/names.py`` (RQ's)."""
    if not is_id(run_id):
        raise ValueError(f"run id {run_id[:80]!r} may hold only {ID_CHARS} characters (shared/names.py)")
    return f"{run_id}-{iteration}-{stage}-{shard}"


def worker_key(name: str) -> str:
    """Redis hash a spar worker keeps up to date: role, model version loaded, current job."""
    return f"spar:worker:{name}"
