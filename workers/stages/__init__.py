"""Stage runners: one function per SPaR stage, and the shard bookkeeping around them.

:func:`run_stage` is what both the local executor and the queue workers call. It skips a shard that
is already done (so a retried job never duplicates output), parses the run's config once into a
:class:`StageContext`, runs the stage function, times it, and only then writes the shard's
completion record (``shared.records.ShardDone``). A stage function therefore does only its stage's
work: read its input, write its output shard, return what it produced as a
``shared.records.ShardOutput`` (counts, engine usage, models, metrics).

A new stage takes three files at least (its ``StageDef`` in ``shared/stages.py``, its function in a
module here, its entry in :data:`RUNNERS`); ``shared/stages.py`` lists the optional others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from shared.config import RunConfig
from shared.records import ShardOutput
from shared.runtime.artifacts import RunPaths
from shared.runtime.data_inputs import check_inputs, stage_data_fields
from shared.stages import STAGE_DEFS

from .assemble import MissingStageOutputError, run_assemble
from .common import (
    ConfigChangedError,
    EngineProvider,
    Progress,
    StageContext,
    StageResult,
    StageSpec,
    finished,
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
    "StageContext",
    "StageResult",
    "StageSpec",
    "run_stage",
]

log = logging.getLogger("spar.stages")

Runner = Callable[[StageContext], ShardOutput]
"""A stage function: given the shard's context, write its outputs and return what it produced."""

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
    paths: RunPaths,
    spec: StageSpec,
    engines: EngineProvider,
    progress: Progress | None = None,
    config: RunConfig | None = None,
) -> StageResult:
    """Run one shard of one stage unless it is already done; returns its (recorded) result.

    The one place that reads the run's config for a shard (unless the caller, which parsed it
    already to check the job, passes it), times the stage and writes its record: a stage function
    gets a :class:`StageContext` and returns only what it produced.
    """
    ctx = StageContext.open(paths, spec, engines, progress, config)
    done = finished(paths, spec, ctx.config.stage_hash(spec.stage))
    if done is not None:
        log.info("shard already done", extra={"event": "shard.skip", **spec.model_dump()})
        return done
    check_inputs(paths, stage_data_fields(spec.stage), ctx.config)  # e.g. judge_data edited since
    log.info("shard started", extra={"event": "shard.start", **spec.model_dump()})
    started_at = time.time()
    started = time.perf_counter()
    output = RUNNERS[spec.stage](ctx)
    record = record_done(
        paths, spec, ctx.config, output, seconds=time.perf_counter() - started, started_at=started_at
    )
    log.info(
        "shard done",
        extra={
            "event": "shard.done",
            **spec.model_dump(),
            "seconds": round(record.seconds, 3),
            **record.counts,
        },
    )
    return StageResult.of(record)
