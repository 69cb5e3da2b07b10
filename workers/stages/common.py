"""What every stage runner shares: the job spec, the engines it may use, and shard bookkeeping.

A stage runner is thin: read the input shard, call the core (``shared``) with an engine, write the
output shard atomically, report counts. The same runner is called by the local executor and, in the
distributed service, by an RQ worker -- the spec is plain JSON for that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shared.config import RunConfig
from shared.engine import Engine, EngineStats, MeteredEngine
from shared.errors import ConfigChangedError  # noqa: F401  (also importable from here)
from shared.records import ShardDone, ShardSpecRecord
from shared.runtime.artifacts import RunPaths, read_json, write_json_atomic
from shared.runtime.shards import StageSpec, load_config  # noqa: F401  (stage runners import them from here)
from shared.runtime.versions import ModelVersion

from ..resolved import resolved_settings

Role = Literal["actor", "refiner"]
Progress = Callable[[str, int, int], None]
"""Progress sink: (what is happening, units done, units total)."""


class EngineProvider(Protocol):
    """Gives a stage the loaded engine for a role's model version (loaded once, kept across shards)."""

    def engine_for(self, role: Role, version: ModelVersion) -> Engine: ...

    def release(self) -> None:
        """Free every loaded engine (before training, which needs the memory)."""


@dataclass
class StageResult:
    """What a stage reports for one shard; written to its ``.done.json``."""

    counts: dict[str, float] = field(default_factory=dict)
    engine: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False
    models: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, object] = field(default_factory=dict)


def finished(paths: RunPaths, spec: StageSpec, config_hash: str) -> StageResult | None:
    """The recorded result of a shard that is already done, or None when it must run."""
    done = paths.shard_done(spec.iteration, spec.stage, spec.shard)
    if not done.exists():
        return None
    record = ShardDone.from_record(read_json(done))
    if record.config_hash != config_hash:
        raise ConfigChangedError(
            f"{done} was produced with settings {record.config_hash} but the run now has "
            f"{config_hash}; start a new run (another run id) instead of reusing this directory"
        )
    return StageResult(
        counts=record.counts,
        engine=record.engine,
        seconds=record.seconds,
        skipped=True,
        models=record.models,
        metrics=record.metrics,
    )


def record_done(paths: RunPaths, spec: StageSpec, config: RunConfig, result: StageResult) -> None:
    """Write the shard's completion record (after its data files are in place)."""
    record = ShardDone(
        spec=ShardSpecRecord(**spec.model_dump()),
        config_hash=config.stage_hash(spec.stage),
        models=result.models,
        metrics=result.metrics,
        counts=result.counts,
        engine=result.engine,
        seconds=result.seconds,
        finished_at=time.time(),
        resolved=resolved_settings(config, spec.stage),
    )
    write_json_atomic(paths.shard_done(spec.iteration, spec.stage, spec.shard), record.as_record())
    paths.note_change(f"done {spec.iteration} {spec.stage} {spec.shard}")


def version_label(version: ModelVersion) -> str:
    """How a manifest names the model a stage used: ``v1 (/path/to/folder)``."""
    where = version.path if version.adapter is None else f"{version.path} + adapter {version.adapter}"
    return f"{version.version} ({where})"


@contextmanager
def metered(engine: Engine, progress: Progress | None, label: str):
    """Count the engine's calls and tokens for one shard, and forward its batch progress."""
    wrapper = MeteredEngine(engine)
    previous = getattr(engine, "progress_callback", None)
    has_hook = hasattr(engine, "progress_callback")
    if has_hook and progress is not None:
        engine.progress_callback = lambda done, total: progress(label, done, total)  # type: ignore[attr-defined]
    try:
        yield wrapper
    finally:
        if has_hook:
            engine.progress_callback = previous  # type: ignore[attr-defined]


def engine_counts(stats: EngineStats) -> dict[str, int]:
    return stats.as_dict()
