"""Runs created from a small config and left unexecuted: what the scheduler, queue and stage tests
start from. One builder, so that every such test writes its prompts and config the same way."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.runs import create_run
from shared.config import RunConfig
from shared.runtime.artifacts import RunPaths


def shaped_model(folder: Path) -> Path:
    """A model folder by its shape only (a ``config.json``): for stages that never load it."""
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def new_run(
    folder: Path,
    name: str,
    prompts: Iterable[str],
    *,
    model: str = "tiny",
    runs: Path,
    run_id: str | None = None,
    **settings: Any,
) -> RunPaths:
    """A run named ``name`` on ``model`` (both roles), its prompts written to
    ``folder/prompts.jsonl``, created under ``runs``; ``settings`` are further config keys."""
    (folder / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    config = RunConfig.model_validate(
        {
            "name": name,
            "prompts": str(folder / "prompts.jsonl"),
            "actor": {"model": model},
            "refiner": {"model": model},
            **settings,
        }
    )
    return create_run(config, runs, run_id)
