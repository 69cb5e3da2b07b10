"""Stage runners: one function per SPaR stage, and the shard bookkeeping around them.

:func:`run_stage` is what both the local executor and the queue workers call. It skips a shard that
is already done (so a retried job never duplicates output), runs the stage, and only then writes
the shard's completion record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from shared.records import ShardDone, StageManifest
from shared.stages import STAGE_DEFS, stage

from ..artifacts import RunPaths, read_json, write_json_atomic
from ..tracking import log_stage_scalars
from .assemble import MissingStageOutputError, run_assemble
from .common import (
    ConfigChangedError,
    EngineProvider,
    Progress,
    StageResult,
    StageSpec,
    finished,
    load_config,
    record_done,
)
from .evaluate import run_eval
from .iopo import run_iopo_groups
from .judge import run_judge
from .refine import run_refine
from .sample import run_sample
from .train import run_init, run_train_actor, run_train_refiner

__all__ = [
    "ConfigChangedError",
    "EngineProvider",
    "MissingStageOutputError",
    "Progress",
    "StageResult",
    "StageSpec",
    "num_shards",
    "run_stage",
    "write_stage_manifest",
]

log = logging.getLogger("spar.stages")

Runner = Callable[[RunPaths, StageSpec, EngineProvider, Progress | None], StageResult]
RUNNERS: dict[str, Runner] = {
    "sample": run_sample,
    "judge": run_judge,
    "refine": run_refine,
    "assemble": run_assemble,
    "train_actor": run_train_actor,
    "train_refiner": run_train_refiner,
    "init": run_init,
    "eval": run_eval,
    "iopo_groups": run_iopo_groups,
}


if set(RUNNERS) != set(STAGE_DEFS):  # the stage table and the runners must name the same stages
    raise ImportError(f"stages without a runner or runners without a stage: {set(RUNNERS) ^ set(STAGE_DEFS)}")


def num_shards(paths: RunPaths, stage_name: str) -> int:
    """A sharded stage follows the prompt shards; the others (assembly, training ...) are one shard."""
    return paths.num_prompt_shards() if stage(stage_name).sharded else 1


def run_stage(
    paths: RunPaths, spec: StageSpec, engines: EngineProvider, progress: Progress | None = None
) -> StageResult:
    """Run one shard of one stage unless it is already done; returns its (recorded) result."""
    config = load_config(paths)
    done = finished(paths, spec, config.stage_hash(spec.stage))
    if done is not None:
        log.info("shard already done", extra={"event": "shard.skip", **spec.model_dump()})
        return done
    log.info("shard started", extra={"event": "shard.start", **spec.model_dump()})
    started_at = time.time()
    result = RUNNERS[spec.stage](paths, spec, engines, progress)
    record_done(paths, spec, config, result, started_at)
    log.info(
        "shard done",
        extra={
            "event": "shard.done",
            **spec.model_dump(),
            "seconds": round(result.seconds, 3),
            **result.counts,
        },
    )
    return result


def _agreed(settings: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The shards' resolved settings if they agree, else every distinct one under ``mixed``."""
    distinct: list[dict[str, Any]] = []
    for item in settings:
        if item not in distinct:
            distinct.append(item)
    if len(distinct) <= 1:
        return distinct[0] if distinct else {}
    return {"mixed": distinct}


def write_stage_manifest(paths: RunPaths, iteration: int, stage: str) -> dict:
    """Sum the shards' records into the stage manifest; requires every shard to be done.

    Shards are never redone once done, so an existing manifest is final and is returned as is.
    """
    if paths.manifest(iteration, stage).exists():
        return read_json(paths.manifest(iteration, stage))
    config = load_config(paths)
    records: list[ShardDone] = []
    for shard in range(num_shards(paths, stage)):
        done = paths.shard_done(iteration, stage, shard)
        if not done.exists():
            raise RuntimeError(f"cannot write the {stage} manifest: shard {shard} is not done")
        records.append(ShardDone.from_record(read_json(done)))
    counts: dict[str, int | float] = {}
    engine: dict[str, int] = {}
    for r in records:
        for k, v in r.counts.items():
            counts[k] = counts.get(k, 0) + v
        for k, v in r.engine.items():
            engine[k] = engine.get(k, 0) + v
    manifest = StageManifest(
        run_id=paths.run_id,
        iteration=iteration,
        stage=stage,
        config_hash=config.stage_hash(stage),
        models={role: label for r in records for role, label in r.models.items()},
        metrics=records[0].metrics if len(records) == 1 else {},
        shards=len(records),
        counts=counts,
        engine=engine,
        shard_seconds=sum(r.seconds for r in records),
        written_at=time.time(),
        resolved=_agreed(r.resolved or {} for r in records),
    ).as_record()
    write_json_atomic(paths.manifest(iteration, stage), manifest)
    paths.note_change(f"manifest {iteration} {stage}")
    log_stage_scalars(paths.root, config, stage, iteration, manifest)  # tensorboard runs only
    return manifest
