"""The in-process executor: all stages of a run, in order, on this machine, no Redis, no GPU needed.

It calls exactly the stage runners the queue workers call (``workers.stages.run_stage``), so a run
made here and a run made by the distributed service produce the same files. A finished shard is
never recomputed, which makes ``--resume`` after a crash (or Ctrl-C) continue where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.config import RunConfig
from shared.runtime.artifacts import RunPaths
from shared.runtime.shards import StageSpec, load_config, num_shards, write_stage_manifest
from shared.stages import pipeline
from workers.engines.slot import EngineSlot, OnLoad
from workers.stages import EngineProvider, Progress, run_stage

log = logging.getLogger("spar.local")


class LocalEngines(EngineSlot):
    """The executor's engine: loaded on first use, kept across shards and stages, one at a time.

    Actor and refiner share it when they are the same model version with the same engine settings
    (the demo's case). Another version or model closes the resident engine before the next loads,
    and ``release`` closes it before a training stage needs the memory
    (:class:`workers.engines.slot.EngineSlot`).
    """

    def __init__(self, config: RunConfig, on_load: OnLoad | None = None) -> None:
        super().__init__(config, on_load)


StageHook = Callable[[int, str, int, int], None]
"""Called as (iteration, stage, shards done, shards total) around each shard."""


@dataclass
class LocalExecutor:
    """Runs every configured stage of every iteration in order, shard by shard."""

    paths: RunPaths
    engines: EngineProvider
    progress: Progress | None = None
    on_shard: StageHook | None = None
    stage_wall: dict[tuple[int, str], float] = field(default_factory=dict)

    @classmethod
    def for_run(cls, paths: RunPaths, **kwargs) -> LocalExecutor:
        return cls(paths=paths, engines=LocalEngines(load_config(paths)), **kwargs)

    def run(self) -> list[dict]:
        """Run (or finish) the whole run; returns the stage manifests in order."""
        config = load_config(self.paths)
        order = pipeline(config.stages, config.iterations, with_init=config.init is not None)
        return [self.run_stage(iteration, stage) for iteration, stage in order]

    def run_stage(self, iteration: int, stage: str) -> dict:
        total = num_shards(self.paths, stage)
        started = time.perf_counter()
        for shard in range(total):
            if self.on_shard is not None:
                self.on_shard(iteration, stage, shard, total)
            spec = StageSpec(run_dir=str(self.paths.root), iteration=iteration, stage=stage, shard=shard)
            run_stage(self.paths, spec, self.engines, self.progress)
        if self.on_shard is not None:
            self.on_shard(iteration, stage, total, total)
        self.stage_wall[(iteration, stage)] = time.perf_counter() - started
        return write_stage_manifest(self.paths, iteration, stage)
