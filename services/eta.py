"""How long a run has left, from what its own stages cost: ``spar run``'s progress and the API's run view.

Why not the progress bar's ETA: rich extrapolates the bar it draws, the shards of one stage, so it
knows nothing of the stages still to come, and a stage of one shard (assembly, training) has no ETA
at all. A run repeats the same stages every iteration, and each finished shard records its seconds
and counts (``ShardDone``; summed in the stage's manifest), so the run's own past is the best guide:

1. **the running stage**: its finished shards' mean seconds times the shards left; a training stage
   (one shard, done at its end) from the steps its trainer logged (``train.log`` events): the steps
   left at the pace of those done since the stage began;
2. **recorded**: a stage finished in an earlier iteration of this run costs what it cost then,
   scaled by its work where the work is known by now (the negatives a refine stage gets from this
   iteration's judge, the pairs and RFT examples the training stages get from its assembly, the
   evaluations an eval stage runs: iteration 0's scores v0 as well as v1, later ones one version);
   A fork (``fork.json``) that has not run a stage in any iteration takes its source run's cost of
   that stage at the same iteration when the source ran it with the same settings (its config
   hash): a tuning point's eval stage costs what the point it was forked from spent, per evaluation
   (the evaluations it took from the source are not run again);
3. **estimate**: a stage this run has not run yet costs what ``spar run --dry-run`` estimates
   (``services/estimate.py``: rates recorded by an earlier run of the same models, else the
   calibration a dry run saved);
4. otherwise the stage is **unknown**: it is named in ``unknown``, and ``eta_s`` (the sum of what is
   known) is then a lower bound, flagged as such; with nothing known at all, ``eta_s`` is None.

The sum is of stages one after the other, as the local executor runs them; the service's pools can
run independent stages of a run at once, so there it errs long.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from shared.config import RunConfig
from shared.records import ShardDone, StageManifest
from shared.runtime.artifacts import FORK_RECORD, RunPaths, read_json
from shared.runtime.shards import load_config, num_shards
from shared.stages import pipeline
from shared.stages import stage as stage_def

from .estimate import Rates, estimate

WORK: dict[str, tuple[str, str]] = {
    "refine": ("judge", "negatives"),
    "iopo_groups": ("assemble", "pairs"),
    "train_actor": ("assemble", "pairs"),
    "train_refiner": ("assemble", "rft"),
}
"""What a stage's cost grows with, where it varies between iterations: (the stage of the same
iteration that counts it, the count). Other stages do the same work every iteration (the prompts),
but for ``eval``, whose work is the evaluations it runs (:func:`_evaluations_planned`)."""

Source = Literal["running", "recorded", "estimate"]
MAX_UNKNOWN = 20
"""The stages without a rate listed by name; the rest are counted."""


class RunEta(BaseModel):
    """The time a run has left, with where the number comes from."""

    eta_s: float | None = Field(
        description="Seconds of work left; None when no stage left has a rate (nothing to go on)."
    )
    eta_source: Literal["recorded", "estimate", "mixed", "done"] | None = Field(
        description="recorded: from this run's own shards; estimate: from the dry run's rates; mixed: "
        "both; done: nothing left."
    )
    lower_bound: bool = Field(
        False, description="Some stages left have no rate (see unknown): eta_s is a floor."
    )
    unknown: list[str] = Field(default_factory=list, description="Stages left without a rate, 'iter 1 eval'.")
    computed_at: float = Field(description="When it was computed (epoch seconds): count down from here.")


class _Run:
    """The run's files as the ETA reads them: manifests, on demand and once each."""

    def __init__(self, paths: RunPaths, config: RunConfig) -> None:
        self.paths = paths
        self.config = config
        self._manifests: dict[tuple[int, str], StageManifest | None] = {}
        self.reached = max(_iterations_on_disk(paths), default=-1)

    def manifest(self, iteration: int, stage: str) -> StageManifest | None:
        key = (iteration, stage)
        if key not in self._manifests:
            found = None
            if iteration <= self.reached:  # no file past the iterations on disk: no stat either
                path = self.paths.manifest(iteration, stage)
                try:
                    found = StageManifest.from_record(read_json(path)) if path.exists() else None
                except (OSError, ValueError):
                    found = None
            self._manifests[key] = found
        return self._manifests[key]

    def work(self, iteration: int, stage: str) -> float | None:
        """The work count of ``stage`` at ``iteration`` (see :data:`WORK`), when its source is done."""
        if stage not in WORK:
            return None
        source, key = WORK[stage]
        manifest = self.manifest(iteration, source)
        return None if manifest is None else float(manifest.counts.get(key, 0))


def _iterations_on_disk(paths: RunPaths) -> list[int]:
    out = []
    for child in paths.root.glob("iter_*"):
        digits = child.name.removeprefix("iter_")
        if digits.isdigit() and len(digits) < 10:
            out.append(int(digits))
    return out


def _evaluations_planned(config: RunConfig, iteration: int) -> int:
    """The evaluations the eval stage of ``iteration`` runs: per role, the version the iteration
    trains, and v0 besides at iteration 0; a role the run never trains only at iteration 0
    (``workers.stages.evaluate._versions``); the actor's IFEval and validation split, the refiner's
    judge accuracy, each as configured."""
    e = config.evaluation
    total = 0
    for role, kinds in (
        ("actor", int(e.ifeval) + int(e.validation_prompts is not None)),
        ("refiner", int(e.judge_data is not None)),
    ):
        trained = config.trains(role)
        versions = (2 if trained else 1) if iteration == 0 else int(trained)
        total += kinds * versions
    return total


def _evaluations_recorded(manifest: StageManifest) -> float | None:
    """The evaluations a finished eval stage ran (None for a manifest from before they were counted,
    or a stage that took every score from elsewhere: nothing to scale from)."""
    ran = manifest.counts.get("evaluations_run")
    return float(ran) if ran else None


EVENTS_TAIL_BYTES = 256 * 1024
"""How much of the end of ``events.jsonl`` is read for a training step: a step is logged every few
seconds to minutes, so the newest one is near the end, and a long run's journal is never read whole."""


def training_step(paths: RunPaths, name: str, since: float) -> tuple[int, int, float] | None:
    """(step, max_steps, when) of the newest ``train.log`` event of the stage's role written after
    ``since`` (when the stage before it finished), or None: a training stage's only sign of progress,
    since its single shard finishes at the very end. Stage 0 (``init``) trains either role."""
    role = stage_def(name).trains
    if role is None and name != "init":
        return None
    try:
        with paths.events.open("rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - EVENTS_TAIL_BYTES, 0))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if '"train.log"' not in line:
            continue
        try:
            event = json.loads(line)
        except ValueError:  # the first line of the tail is cut, or a line is being written
            continue
        if event.get("event") != "train.log" or (role is not None and event.get("role") != role):
            continue
        ts, step, total = event.get("ts"), event.get("step"), event.get("max_steps")
        if not isinstance(ts, int | float) or ts < since:
            return None  # the newest such event belongs to an earlier training
        if isinstance(step, int) and isinstance(total, int):
            return step, total, float(ts)
        return None
    return None


def _changed_at(paths: RunPaths) -> float | None:
    """When the run's journal last noted a finished shard: the start of the stage now running."""
    try:
        return paths.changes.stat().st_mtime
    except OSError:
        return None


def _running(run: _Run, iteration: int, stage: str) -> float | None:
    """Seconds left of a stage some of whose shards are done: their mean times the shards left; of a
    training stage under way, its steps left at the pace of its steps so far (model loading included)."""
    if iteration > run.reached:
        return None
    if stage == "init" or stage_def(stage).trains is not None:
        since = _changed_at(run.paths)
        step = None if since is None else training_step(run.paths, stage, since)
        if step is not None and step[0] > 0:  # a step implies `since`
            done, total, at = step
            return max(total - done, 0) * max(at - since, 0.0) / done
    folder = run.paths.stage_dir(iteration, stage)
    done = []
    for path in folder.glob("shard_*.done.json"):
        try:
            done.append(ShardDone.from_record(read_json(path)).seconds)
        except (OSError, ValueError):
            continue
    if not done:
        return None
    left = max(num_shards(run.paths, stage) - len(done), 0)
    return sum(done) / len(done) * left


def _recorded(run: _Run, iteration: int, stage: str, finished: dict[str, list[int]]) -> float | None:
    """What ``stage`` cost in the latest earlier iteration that finished it, scaled by its work."""
    before = max((t for t in finished.get(stage, []) if t < iteration), default=None)
    if before is None:
        return None
    manifest = run.manifest(before, stage)
    assert manifest is not None
    planned = _evaluations_planned(run.config, iteration)
    return _scaled(manifest, stage, planned, run.work(before, stage), run.work(iteration, stage))


def _scaled(
    manifest: StageManifest, stage: str, evaluations: int, then: float | None, now: float | None
) -> float | None:
    """A finished stage's seconds scaled to the work left: an eval stage by the ``evaluations`` it
    will run against those the manifest ran; a stage of :data:`WORK` by its count ``now`` against
    ``then`` (None where not counted yet: as much as then)."""
    seconds = manifest.shard_seconds
    if stage == "eval":
        ran = _evaluations_recorded(manifest)
        return seconds if ran is None else seconds * evaluations / ran
    if now is None or then is None:  # not a stage of WORK, or this work is not counted yet
        return seconds
    if then <= 0:  # nothing to scale from (the stage had no work then)
        return seconds if now <= 0 else None
    return seconds * now / then


class _Source:
    """The run a fork was forked from, and the evaluations the fork took from it per iteration."""

    def __init__(self, run: _Run, kept: dict[int, int]) -> None:
        self.run = run
        self.kept = kept

    @classmethod
    def of(cls, paths: RunPaths) -> _Source | None:
        """None for a run made from scratch, or a fork whose source is gone or unreadable."""
        record = paths.root / FORK_RECORD
        if not record.exists():
            return None
        try:
            fork = read_json(record)
            source = RunPaths(Path(fork["source"]))
            config = load_config(source)
            kept = {int(e["iteration"]): len(e.get("kept", [])) for e in fork.get("evaluations", [])}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return cls(_Run(source, config), kept)

    def cost(self, run: _Run, iteration: int, stage: str) -> float | None:
        """What the source's same stage at ``iteration`` cost, when it ran with this run's settings,
        scaled to this run's work (evaluations left to run; pairs, negatives where counted)."""
        manifest = self.run.manifest(iteration, stage)
        if manifest is None or manifest.config_hash != run.config.stage_hash(stage):
            return None
        planned = max(_evaluations_planned(run.config, iteration) - self.kept.get(iteration, 0), 0)
        return _scaled(manifest, stage, planned, self.run.work(iteration, stage), run.work(iteration, stage))


def run_eta(
    paths: RunPaths, config: RunConfig, rates: Rates | None = None, now: float | None = None
) -> RunEta:
    """The ETA of a run from its directory (``config``: the run's own) and, for the stages it has not
    run yet, the dry run's ``rates`` (:func:`services.estimate.load_rates`; None: none)."""
    run = _Run(paths, config)
    # The iterations on disk and the next one are looked at stage by stage; every later one has no
    # file yet and costs what that next one does, so it is counted, not walked: the ETA's cost grows
    # with the iterations a run has started, never with the count its config asks for.
    walked = min(config.iterations, run.reached + 2)
    repeat = config.iterations - walked
    order = list(pipeline(config.stages, walked, with_init=config.init is not None))
    estimates = {}
    if rates is not None:
        planned = estimate(config.model_copy(update={"iterations": walked}), _prompt_count(paths), rates)
        estimates = {(e.iteration, e.stage): e for e in planned if e.basis != "none"}
    finished: dict[str, list[int]] = {}  # stage -> the iterations that finished it
    for iteration, stage in order:
        if run.manifest(iteration, stage) is not None:
            finished.setdefault(stage, []).append(iteration)
    known: list[tuple[float, Source]] = []
    unknown: list[str] = []
    forked_from = _Source.of(paths)
    for iteration, stage in order:
        if run.manifest(iteration, stage) is not None:
            continue
        seconds = _running(run, iteration, stage)
        source: Source = "running"
        if seconds is None:
            seconds, source = _recorded(run, iteration, stage, finished), "recorded"
        if seconds is None and forked_from is not None:
            seconds = forked_from.cost(run, iteration, stage)
        if seconds is None and (iteration, stage) in estimates:
            seconds, source = estimates[(iteration, stage)].seconds, "estimate"
        later = repeat if iteration == walked - 1 and stage != "init" else 0  # the iterations not walked
        if seconds is None:
            unknown.append(f"iter {iteration} {stage}")
            if later:
                last = config.iterations - 1
                unknown.append(f"iter {last} {stage}" if later == 1 else f"iters {walked}-{last} {stage}")
        else:
            known.append((seconds * (1 + later), source))
    at = time.time() if now is None else now
    if len(unknown) > MAX_UNKNOWN:  # a long run's view stays small
        unknown = [*unknown[:MAX_UNKNOWN], f"and {len(unknown) - MAX_UNKNOWN} more"]
    if not known and not unknown:
        return RunEta(eta_s=0.0, eta_source="done", computed_at=at)
    total = sum(s for s, _ in known)
    if not known or (unknown and total <= 0):
        # a floor of nothing (the first stage's shards all done, its manifest not written yet) says
        # nothing: the progress line would print ">= 0:00:00 left"
        return RunEta(eta_s=None, eta_source=None, lower_bound=True, unknown=unknown, computed_at=at)
    kinds = {"estimate" if s == "estimate" else "recorded" for _, s in known}
    return RunEta(
        eta_s=round(total, 1),
        eta_source=kinds.pop() if len(kinds) == 1 else "mixed",
        lower_bound=bool(unknown),
        unknown=unknown,
        computed_at=at,
    )


def _prompt_count(paths: RunPaths) -> int:
    try:
        return max(int(read_json(paths.config).get("prompts", 0)), 1)
    except (OSError, ValueError):
        return 1


def format_eta(eta: RunEta | None, now: float | None = None) -> str:
    """'run 0:04:10 left (recorded)', counting down from when it was computed; '>= ' for a floor."""
    if eta is None or eta.eta_s is None:
        return "run: no ETA yet"
    if eta.eta_source == "done":
        return "run: done"
    left = max(eta.eta_s - ((time.time() if now is None else now) - eta.computed_at), 0.0)
    hours, rest = divmod(int(round(left)), 3600)
    minutes, seconds = divmod(rest, 60)
    floor = ">= " if eta.lower_bound else ""
    return f"run {floor}{hours}:{minutes:02d}:{seconds:02d} left ({eta.eta_source})"
