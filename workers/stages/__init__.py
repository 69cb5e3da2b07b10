"""Stage runners: one function per SPaR stage, and the shard bookkeeping around them.

:func:`run_stage` is what both the local executor and the queue workers call. It skips a shard that
is already done (so a retried job never duplicates output), runs the stage, and only then writes
the shard's completion record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shared.runtime.artifacts import RunPaths
from shared.stages import STAGE_DEFS

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
    "run_stage",
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
    result = RUNNERS[spec.stage](paths, spec, engines, progress)
    record_done(paths, spec, config, result)
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
