"""Shards and stage manifests: the bookkeeping that the scheduler and the workers both do.

A stage of an iteration is cut into shards (``StageSpec``, the JSON payload of a shard job). A
worker writes a shard's ``.done.json`` when the shard's outputs are in place; once every shard of a
stage is done, whoever notices first (the scheduler, or the local executor) sums the records into
the stage's ``manifest.json``. Nothing here runs a stage: the API process imports this module, and
must not load engines or stage code to advance a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from shared.config import RunConfig
from shared.records import ShardDone, StageManifest, StageSpec
from shared.stages import pipeline, stage

from .artifacts import RunPaths, read_json, write_json_atomic
from .tracking import log_stage_scalars

log = logging.getLogger("spar.stages")

# StageSpec: re-exported from shared.records
__all__ = ["StageSpec", "load_config", "num_shards", "run_finished", "write_stage_manifest"]


def load_config(paths: RunPaths) -> RunConfig:
    """The validated config a run was created with (``<run>/config.json``).

    Stage code never calls it: ``workers.stages.run_stage`` parses it once per shard into the
    stage's context.
    """
    return RunConfig.model_validate(read_json(paths.config)["config"])


def run_finished(paths: RunPaths) -> bool:
    """Whether every stage of every iteration the run's config asks for has its manifest."""
    config = load_config(paths)
    order = pipeline(config.stages, config.iterations, with_init=config.init is not None)
    return all(paths.manifest(iteration, name).exists() for iteration, name in order)


def num_shards(paths: RunPaths, stage_name: str) -> int:
    """A sharded stage follows the prompt shards; the others (assembly, training ...) are one shard."""
    return paths.num_prompt_shards() if stage(stage_name).sharded else 1


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
