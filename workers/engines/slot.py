"""One resident engine per process: the memory policy the worker and the local executor share.

A stage uses one role's engine at a time (sample: the actor; judge, refine, IOPO: the refiner;
eval: the actor, then the refiner), and an accelerator holds one model's weights plus its KV cache
comfortably, not two. So the slot keeps at most ONE engine: asking for another model version (or
another role's different model) closes the resident engine FIRST and only then builds the next one,
and :meth:`EngineSlot.release` closes it for real before training. Actor and refiner share the
engine when they are the same model version with the same engine settings (the demo's case).

Closing means :func:`workers.engines.close_engine`: for vLLM the engine lives in a child process
(``ProcessEngine``) whose end returns all of its memory (``bench/engine_memory.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from shared.config import ModelConfig, RunConfig
from shared.engine import Engine
from shared.runtime.versions import ModelVersion

log = logging.getLogger("spar.engines")

OnLoad = Callable[[str, str, float], None]
"""Called as (role, "version (path)", load seconds) after an engine is built."""


def engine_key(model: ModelConfig, version: ModelVersion) -> str:
    """What makes two requests servable by the same engine: settings, weights and adapter."""
    return model.model_dump_json(exclude={"version", "model"}) + version.path + str(version.adapter)


class EngineSlot:
    """Holds at most one loaded engine; see the module docstring for the policy and why."""

    def __init__(self, config: RunConfig | None = None, on_load: OnLoad | None = None) -> None:
        self.config = config
        self.on_load = on_load
        self.on_loading: Callable[[str, str], None] | None = None
        """Called as (role, "version (path)") before a load starts: the CLI says a model is loading
        instead of showing a batch bar stuck at 0 for the load's minute."""
        self.key: str | None = None
        self.engine: Engine | None = None
        self.current: dict[str, str] = {}
        """Roles the resident engine serves -> "version (path)"; empty when nothing is loaded."""
        self.loads = 0
        self.closes = 0

    @property
    def loaded(self) -> dict[str, Engine]:
        """The resident engines by key (zero or one)."""
        return {} if self.engine is None or self.key is None else {self.key: self.engine}

    def engine_for(self, role: str, version: ModelVersion) -> Engine:
        from . import build_engine

        if self.config is None:
            raise RuntimeError("bind a run config (EngineSlot.config) before asking for an engine")
        model: ModelConfig = getattr(self.config, role)
        key = engine_key(model, version)
        label = f"{version.version} ({version.path})"
        if self.engine is not None and self.key == key:
            self.current[role] = label
            return self.engine
        self.release()  # the old engine's memory is free before the next one loads
        if self.on_loading is not None:
            self.on_loading(role, label)
        started = time.perf_counter()
        engine = build_engine(model, version, seed=self.config.seed)
        seconds = time.perf_counter() - started
        self.key, self.engine, self.current = key, engine, {role: label}
        self.loads += 1
        log.info(
            "engine loaded",
            extra={
                "event": "engine.load",
                "role": role,
                "version": version.version,
                "path": version.path,
                "adapter": version.adapter,
                "seconds": round(seconds, 2),
            },
        )
        if self.on_load is not None:
            self.on_load(role, label, seconds)
        return engine

    def release(self) -> None:
        """Close the resident engine (its memory and processes are gone when this returns)."""
        from . import close_engine

        engine, self.engine, self.key = self.engine, None, None
        released = dict(self.current)
        self.current = {}
        if engine is None:
            return
        close_engine(engine)
        self.closes += 1
        log.info("engine closed", extra={"event": "engine.close", "models": released})

    def host_pids(self) -> list[int]:
        """Process ids of the engine host children (``ProcessEngine``), for what a worker publishes."""
        pid = getattr(getattr(self.engine, "proc", None), "pid", None)
        return [pid] if isinstance(pid, int) else []
