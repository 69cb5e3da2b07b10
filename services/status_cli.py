"""``spar status RUN_DIR [RUN_DIR ...]``: where runs stand, read from their directories alone.

Why: long arms run in the background (``nohup spar run ... --no-progress``, a queue of arms, or the
service's workers), where no progress bar is on anyone's screen, and ``tail`` of a log full of
engine warnings does not say how far a run is. The run directory is the source of truth
(docs/architecture.md), so this reads it: the stage each run is at ("stage 9 of 22 · iteration 2
of 3 · refine", the same words as ``spar run``'s bars), its shards done, the items a running shard
has kept so far (refine trees, evaluations: ``shared.runtime.partial``), the step a running training
stage has reached (its ``train.log`` events in ``events.jsonl``), how long ago the run last
changed, whether a ``spar run`` process is working on it (``services.run_owner``: alive, or gone
and to be resumed), the time left from its own recorded shard times (``services.eta``), and its
latest evaluation.
``--json`` prints the same as JSON for scripts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from shared.runtime.artifacts import FORK_RECORD, RunPaths, read_json
from shared.runtime.packing import finished_when_packed
from shared.runtime.partial import SUFFIX as PARTIAL_SUFFIX
from shared.runtime.shards import load_config, num_shards
from shared.runtime.versions import pending_rebuilds
from shared.stages import pipeline

from .eta import format_eta, run_eta, training_step
from .run_owner import owner_line


class StageAt(BaseModel):
    """The first stage of the pipeline that is not complete."""

    iteration: int = Field(description="0-based iteration.")
    stage: str
    position: int = Field(description="1-based place of the stage in the whole pipeline.")
    stages: int = Field(description="Stages in the whole pipeline (init included).")
    shards_done: int
    shards: int
    kept_items: int = Field(
        description="Items the stage's unfinished shards kept so far (trees, evaluations)."
    )
    step: int | None = Field(None, description="A training stage's last logged optimizer step.")
    max_steps: int | None = Field(None, description="The steps that training stage will take in all.")


class RunStatusView(BaseModel):
    """What ``spar status`` says of one run."""

    run_id: str
    name: str = Field(description="The config's name (the arm).")
    run_dir: str
    finished: bool
    at: StageAt | None = Field(description="Where the run is; None once every stage is complete.")
    iterations: int
    last_change_s: float | None = Field(description="Seconds since the run's files last changed.")
    eta_s: float | None
    eta: str = Field(description="The ETA as `spar run` prints it.")
    process: str = Field("", description="Whether a `spar run` process is working on it now.")
    forked_from: str | None = None
    last_eval: dict[str, Any] | None = Field(
        None,
        description="The newest eval stage's last IFEval, validation-split and judge scores: version, "
        "metrics in %.",
    )
    to_rebuild: list[str] = Field(
        default_factory=list,
        description="Versions `spar unpack` left to retrain (checked against the packed weights), "
        "not published yet: e.g. 'actor v1'.",
    )
    finished_when_packed: bool = Field(
        False,
        description="Unpacked from an archive of the finished run: every result is here, only the "
        "weights of to_rebuild are not (`spar run --resume` retrains them).",
    )


def _kept_items(paths: RunPaths, iteration: int, stage: str) -> tuple[int, float | None]:
    """Lines of the stage's ``.partial`` files (one per finished tree or evaluation), and when the
    newest was written (a kept item is a change, though the run's journal notes only shards)."""
    count, newest = 0, None
    for partial in paths.stage_dir(iteration, stage).glob(f"shard_*.jsonl{PARTIAL_SUFFIX}"):
        try:
            count += sum(1 for line in partial.read_text(encoding="utf-8").splitlines() if line.strip())
            newest = max(newest or 0.0, partial.stat().st_mtime)
        except OSError:  # finished (and removed) meanwhile
            continue
    return count, newest


def _last_eval(paths: RunPaths, iterations: int) -> dict[str, Any] | None:
    """The latest IFEval and judge scores the run has, from its newest finished eval stage."""
    for iteration in reversed(range(iterations)):
        manifest = paths.manifest(iteration, "eval")
        if not manifest.exists():
            continue
        metrics = read_json(manifest).get("metrics", {})
        out: dict[str, Any] = {"iteration": iteration}
        for kind, keys in (
            ("ifeval", ("prompt_loose", "prompt_strict")),
            ("validation", ("prompt_loose", "prompt_strict")),  # a tuning run scores only this split
            ("judge", ("accuracy",)),
        ):
            rows = metrics.get(kind) or []
            if rows:
                last = rows[-1]
                out[kind] = {"version": last.get("version"), **{k: _pct(last.get(k)) for k in keys}}
        return out
    return None


def _pct(value: Any) -> float | None:
    return round(100 * value, 1) if isinstance(value, int | float) else None


def run_status(run_dir: Path, now: float | None = None) -> RunStatusView:
    """Where the run in ``run_dir`` stands (a clear error when it is not a run directory)."""
    from .runs import open_run

    paths = open_run(run_dir)
    config = load_config(paths)
    order = list(pipeline(config.stages, config.iterations, with_init=config.init is not None))
    changes = paths.root / ".changes"
    changed = changes.stat().st_mtime if changes.exists() else paths.config.stat().st_mtime
    at, kept_at, step_at = None, None, None
    for position, (iteration, name) in enumerate(order, start=1):
        if paths.manifest(iteration, name).exists():
            continue
        shards = num_shards(paths, name)
        kept, kept_at = _kept_items(paths, iteration, name)
        # the journal notes finished shards: its time is when the stage before this one ended
        step = training_step(paths, name, since=changed)
        step_at = step[2] if step is not None else None
        at = StageAt(
            iteration=iteration,
            stage=name,
            position=position,
            stages=len(order),
            shards_done=sum(paths.shard_done(iteration, name, k).exists() for k in range(shards)),
            shards=shards,
            kept_items=kept,
            step=step[0] if step is not None else None,
            max_steps=step[1] if step is not None else None,
        )
        break
    now = time.time() if now is None else now
    changed = max(changed, kept_at or 0.0, step_at or 0.0)
    eta = run_eta(paths, config, now=now)
    fork = paths.root / FORK_RECORD
    return RunStatusView(
        run_id=paths.run_id,
        name=config.name,
        run_dir=str(paths.root),
        finished=at is None,
        at=at,
        iterations=config.iterations,
        last_change_s=round(max(now - changed, 0.0), 1),
        eta_s=eta.eta_s,
        eta=format_eta(eta, now=now),
        process=owner_line(paths),
        forked_from=read_json(fork).get("source_run_id") if fork.exists() else None,
        last_eval=_last_eval(paths, config.iterations),
        to_rebuild=[f"{role} v{version}" for role, version in pending_rebuilds(paths)],
        finished_when_packed=finished_when_packed(paths.root),
    )


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_status(view: RunStatusView) -> list[str]:
    """The lines ``spar status`` prints for one run (plain text, no markup)."""
    title = view.run_id if view.name == view.run_id else f"{view.run_id} ({view.name})"
    lines = [f"{title}  {view.run_dir}"]
    if view.forked_from:
        lines.append(f"  forked from {view.forked_from}")
    if view.at is None:
        lines.append(f"  finished: all {view.iterations} iterations · last change {_ago(view.last_change_s)}")
    else:
        a = view.at
        where = (
            f"stage {a.position} of {a.stages} · iteration {a.iteration + 1} of {view.iterations} · {a.stage}"
        )
        kept = f", {a.kept_items} items kept in unfinished shards" if a.kept_items else ""
        steps = f", step {a.step} of {a.max_steps}" if a.step is not None else ""
        lines.append(f"  {where}: {a.shards_done}/{a.shards} shards done{kept}{steps}")
        lines.append(f"  last change {_ago(view.last_change_s)} · {view.eta}")
        lines.append(f"  {view.process}")
    if view.finished_when_packed:
        lines.append(
            "  finished when packed: every result is here; only the weights of the versions below are "
            "not (`spar run --resume` retrains them)"
        )
    if view.to_rebuild:
        lines.append(
            f"  to rebuild (unpacked): {', '.join(view.to_rebuild)}; each is retrained when its stage "
            "comes and published only if bit-identical to the packed one"
        )
    e = view.last_eval
    if e:
        parts = []
        if "ifeval" in e:
            i = e["ifeval"]
            parts.append(
                f"actor {i['version']} IFEval prompt loose {i['prompt_loose']}%, strict {i['prompt_strict']}%"
            )
        if "validation" in e:
            v = e["validation"]
            parts.append(
                f"actor {v['version']} validation prompt loose {v['prompt_loose']}%, "
                f"strict {v['prompt_strict']}%"
            )
        if "judge" in e:
            parts.append(f"refiner {e['judge']['version']} judge pairwise {e['judge']['accuracy']}%")
        lines.append(f"  last eval (iteration {e['iteration'] + 1}): " + " · ".join(parts))
    return lines


def status_command(run_dirs: list[Path], as_json: bool) -> int:
    """Print each run's status on stdout (what the command is for; messages go to stderr): 0 when
    every run directory could be read."""
    views = [run_status(d) for d in run_dirs]
    if as_json:
        text = json.dumps([v.model_dump(mode="json") for v in views], indent=2)
    else:
        text = "\n\n".join("\n".join(render_status(view)) for view in views)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `spar status ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0
