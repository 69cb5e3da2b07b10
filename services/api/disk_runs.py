"""Runs found in the data root that Redis does not know: made by ``spar run``, shown read-only.

Why: an engineer who runs ``spar run CONFIG --runs-dir $SPAR_DATA_ROOT/runs`` on the service's
volume expects the run on the dashboard. The run directory is the source of truth
(docs/architecture.md), so everything a view shows can be read from it; only the scheduler's
status is missing, and it is derived here: ``succeeded`` once every stage of the pipeline has a
manifest, else ``incomplete`` (stopped, or still running under ``spar run``: the files cannot tell
which). Such a run is marked ``source: "disk"``; cancel refuses it and ``POST .../resume`` hands it
to the scheduler (its config then has to pass the same data-root rules as a new run's).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from shared.names import is_id
from shared.runtime.artifacts import RunPaths, read_json
from shared.runtime.shards import run_finished

INCOMPLETE = "incomplete"
"""Status of a disk run whose pipeline is not finished (no scheduler ever ran it)."""
MAX_DISK_RUNS = 1000
"""Most disk runs a list shows (newest first by folder time): a listing must stay cheap."""


def disk_run_ids(runs_root: Path, known: set[str]) -> list[str]:
    """Run folders under ``runs_root`` with a config.json whose id Redis does not know, newest first.

    Hidden folders (``.creating-*``, a run being built) and names that are not run ids are skipped.
    """
    try:
        entries = [e for e in runs_root.iterdir() if not e.name.startswith(".")]
    except OSError:  # no runs folder yet
        return []
    found = []
    for entry in entries:
        if entry.name in known or not is_id(entry.name):
            continue
        try:
            if (entry / "config.json").is_file():
                found.append((entry.stat().st_mtime, entry.name))
        except OSError:
            continue
    found.sort(reverse=True)
    return [name for _, name in found[:MAX_DISK_RUNS]]


def disk_state(runs_root: Path, run_id: str) -> dict[str, str] | None:
    """A scheduler-like state (strings, as Redis holds them) for a run found on disk, or None."""
    if not is_id(run_id):
        return None
    paths = RunPaths(runs_root / run_id)
    if not paths.config.is_file():
        return None
    from .views import stage_progress

    try:
        record = read_json(paths.config)
        created = dt.datetime.fromisoformat(str(record.get("created_at"))).timestamp()
        progress = stage_progress(paths)
        finished = run_finished(paths)
        changed = (paths.root / ".changes").stat().st_mtime if (paths.root / ".changes").exists() else created
    except (OSError, ValueError, KeyError, TypeError):
        return None  # removed meanwhile or unreadable: not listed rather than a 500
    current = next((p for p in progress if not p["complete"]), progress[-1] if progress else None)
    return {
        "run_dir": str(paths.root),
        "status": "succeeded" if finished else INCOMPLETE,
        "created_at": f"{created:.3f}",
        "updated_at": f"{changed:.3f}",
        "error": "",
        "iteration": str(current["iteration"] if current else 0),
        "stage": "" if finished or current is None else str(current["stage"]),
        "source": "disk",
    }
