"""What every stage runner shares: its context, the engines it may use, and shard bookkeeping.

A stage runner is thin: given a :class:`StageContext`, read the input shard, call the core
(``shared``) with an engine, write the output shard atomically, and return what it produced
(:class:`shared.records.ShardOutput`). Timing, the completion record and the skip of a done shard
are :func:`workers.stages.run_stage`'s. The same runner is called by the local executor and, in the
distributed service, by an RQ worker -- the spec is plain JSON for that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pydantic import Field

from shared.config import RunConfig
from shared.engine import Engine, MeteredEngine
from shared.errors import ConfigChangedError  # noqa: F401  (also importable from here)
from shared.records import ShardDone, ShardOutput, StageSpec
from shared.runtime.artifacts import RunPaths, read_json, write_json_atomic
from shared.runtime.shards import load_config
from shared.runtime.versions import ModelVersion, version_for

from ..resolved import resolved_settings

Role = Literal["actor", "refiner"]
Progress = Callable[[str, int, int], None]
"""Progress sink: (what is happening, units done, units total)."""


class EngineProvider(Protocol):
    """Gives a stage the loaded engine for a role's model version (loaded once, kept across shards)."""

    def engine_for(self, role: Role, version: ModelVersion) -> Engine: ...

    def release(self) -> None:
        """Free every loaded engine (before training, which needs the memory)."""


@dataclass(frozen=True)
class StageContext:
    """Everything a stage function needs for one shard, built once by :func:`workers.stages.run_stage`.

    The run's config is parsed here once per shard (stage functions never read ``config.json``
    themselves), and the paths a shard reads and writes are named in one place.
    """

    paths: RunPaths
    spec: StageSpec
    config: RunConfig
    engines: EngineProvider
    progress: Progress | None = None

    @classmethod
    def open(
        cls,
        paths: RunPaths,
        spec: StageSpec,
        engines: EngineProvider,
        progress: Progress | None = None,
        config: RunConfig | None = None,
    ) -> StageContext:
        """The context of ``spec``; the run's config is read from disk unless given (one read per shard)."""
        return cls(paths, spec, load_config(paths) if config is None else config, engines, progress)

    @property
    def iteration(self) -> int:
        return self.spec.iteration

    def input_shard(self, stage: str, shard: int | None = None) -> Path:
        """Shard ``shard`` (default: this shard) of ``stage``'s output in this iteration."""
        return self.paths.shard(self.spec.iteration, stage, self.spec.shard if shard is None else shard)

    @property
    def output_shard(self) -> Path:
        """Where this shard's rows go."""
        return self.paths.shard(self.spec.iteration, self.spec.stage, self.spec.shard)

    def version(self, role: str, iteration: int | None = None) -> ModelVersion:
        """The model ``role`` plays in ``iteration`` (default: this iteration)."""
        return version_for(
            self.paths, self.config, role, self.spec.iteration if iteration is None else iteration
        )

    def report(self, label: str, done: int, total: int) -> None:
        """Forward progress to the sink, if there is one."""
        if self.progress is not None:
            self.progress(label, done, total)


class StageResult(ShardDone):
    """What :func:`workers.stages.run_stage` returns: the shard's completion record, and whether it was
    already done (then nothing ran). A record and not a wrapper around one, so its fields are declared
    once, by :class:`ShardDone`; ``skipped`` is never written."""

    skipped: bool = Field(False, exclude=True)

    @classmethod
    def of(cls, record: ShardDone, skipped: bool = False) -> StageResult:
        return cls(**dict(record), skipped=skipped)


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
    return StageResult.of(record, skipped=True)


def record_done(
    paths: RunPaths,
    spec: StageSpec,
    config: RunConfig,
    output: ShardOutput,
    seconds: float,
    started_at: float | None = None,
) -> ShardDone:
    """Write the shard's completion record (after its data files are in place) and return it."""
    record = ShardDone(
        started_at=started_at,
        spec=spec,
        config_hash=config.stage_hash(spec.stage),
        **dict(output),
        seconds=seconds,
        finished_at=time.time(),
        resolved=resolved_settings(config, spec.stage),
    )
    write_json_atomic(paths.shard_done(spec.iteration, spec.stage, spec.shard), record.as_record())
    paths.note_change(f"done {spec.iteration} {spec.stage} {spec.shard}")
    return record


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
