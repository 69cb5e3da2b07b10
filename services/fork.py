"""Forking a run: a new run that reuses the finished stages an earlier run shares with it.

An ablation changes one setting (where the pairs come from, the objective, the judge's backend);
every stage that setting does not reach is the same computation, often most of an iteration's
cost. ``spar run ARM.yaml --fork SOURCE_RUN`` creates the new run as usual, then walks its
pipeline in order and links into it every stage whose output is provably identical:

* the source ran the same (iteration, stage), reading the same stages' outputs (the stage
  table's declared ``reads``: ``shared.stages.dependencies``), and each of those is reused too --
  so its inputs are the same files;
* the stage's settings hash (``RunConfig.stage_hash``, recorded in each shard's completion record)
  must be the same under the new config, and every shard of it must be done in the source; a
  hash that differs only by where the same data files lie (a run made in another checkout) counts
  as the same, compared with each path replaced by the file's recorded digest;
* every shard must record the same resolved settings (engine release, dtype, training precision:
  ``workers/resolved.py``) as this machine resolves for the new config: the same hash computed in
  bfloat16 on one CPU and float32 on another is not the same output;
* the data files the stage reads (SFT data, held-out pairs, validation prompts) must have equal
  recorded contents in both runs (``shared.runtime.data_inputs``): the hash holds their paths only;
* the prompts (their shard files, byte for byte) must be identical, else nothing is shared.

Files are hard-linked where the file system allows (a fork costs no space), copied otherwise, and
only completion records and data are taken: the manifests are rebuilt for the new run. A training
stage brings the model version it published. ``fork.json`` in the new run records the source and
what was reused, so the report can tell reused stages (and their wall time) from work done here.

An eval stage that is not reused (it scores a newly trained version) still takes the source's
evaluations of the versions both runs share, when the settings that evaluation depends on are the
same (``shared.runtime.fork_evaluations``): they are written as the stage's kept items, so it scores only
what is new. Each IFEval pass of a 135M model costs a CPU a quarter of an hour.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from shared.config import RunConfig
from shared.errors import ConfigError
from shared.records import ShardDone
from shared.runtime.artifacts import FORK_RECORD, RunPaths, read_json, write_json_atomic
from shared.runtime.data_inputs import content_view, differing_records, recorded_inputs, stage_data_fields
from shared.runtime.fork_evaluations import seed_fork, version_writers
from shared.runtime.versions import version_dir
from shared.stages import VERSION_READ, Node, graph, producers, stage

log = logging.getLogger("spar.fork")  # in the run's event log

Resolver = Callable[[RunConfig, str], dict[str, Any]]
"""What this machine resolves a stage's settings to (``workers.resolved.resolved_settings``).

Passed in by the caller, the CLI, that runs the forked stages here: the fork decides from the
records alone and so never imports the worker runtime."""


def _link_tree(src: Path, dst: Path) -> None:
    """Hard-link ``src``'s files under ``dst`` (copying across file systems), skipping manifests."""

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns("manifest.json", ".*"))


def _prompts_identical(a: RunPaths, b: RunPaths) -> bool:
    n = a.num_prompt_shards()
    if n != b.num_prompt_shards():
        return False
    return all(a.prompt_shard(k).read_bytes() == b.prompt_shard(k).read_bytes() for k in range(n))


@dataclass(frozen=True)
class ForkPair:
    """The source run and the new run, with their configs read once.

    ``source_view`` and ``view``: the configs with their data files' paths replaced by the digests
    each run recorded (``shared.runtime.data_inputs.content_view``); None for a run made before
    digests were recorded. With both, a stage whose hash differs only by where the same data files
    lie (a run made in another checkout) is still the same computation.
    """

    source: RunPaths
    target: RunPaths
    source_config: RunConfig
    config: RunConfig

    @cached_property
    def source_inputs(self) -> dict[str, dict[str, Any]] | None:
        return recorded_inputs(self.source)

    @cached_property
    def target_inputs(self) -> dict[str, dict[str, Any]] | None:
        return recorded_inputs(self.target)

    @cached_property
    def source_view(self) -> RunConfig | None:
        return content_view(self.source_config, self.source_inputs)

    @cached_property
    def view(self) -> RunConfig | None:
        return content_view(self.config, self.target_inputs)

    def same_settings(self, name: str, recorded_hash: str) -> bool:
        """Whether a source shard recorded with ``recorded_hash`` has the new run's settings."""
        if recorded_hash == self.config.stage_hash(name):
            return True
        if self.source_view is None or self.view is None:
            return False
        return recorded_hash == self.source_config.stage_hash(name) and (
            self.source_view.stage_hash(name) == self.view.stage_hash(name)
        )


def stage_reuse_blocker(pair: ForkPair, iteration: int, name: str, resolve: Resolver) -> str | None:
    """Why the source's stage cannot stand in for the new run's on this machine; None when it can.

    Same settings (the stage hash, or the same hash once the data files' paths are replaced by
    their contents), every shard done, and the same resolved settings (engine release, dtype,
    training precision: ``workers.resolved``) as this machine would use: a shard recorded before
    those were recorded cannot be shown to match, so it is not reused. The data files the stage
    reads must also have equal recorded contents in both runs (``shared.runtime.data_inputs``):
    the hash holds only their paths.
    """
    changed = differing_records(pair.source_inputs, pair.target_inputs, stage_data_fields(name))
    if changed:
        return f"{', '.join(changed)}: the file's content differs from the source run's"
    source = pair.source
    shards = source.num_prompt_shards() if stage(name).sharded else 1
    wanted = pair.config.stage_hash(name)
    here = resolve(pair.config, name)
    for shard in range(shards):
        done = source.shard_done(iteration, name, shard)
        if not done.exists():
            return f"shard {shard} is not done"
        record = ShardDone.from_record(read_json(done))
        if not pair.same_settings(name, record.config_hash):
            return f"settings differ (hash {record.config_hash} there, {wanted} here)"
        if record.resolved is None:
            return f"shard {shard} does not record its resolved settings (made before they were recorded)"
        if record.resolved != here:
            return f"resolved differently: {record.resolved} there, {here} on this machine"
    return None


def _published(iteration: int, name: str) -> list[tuple[str, int]]:
    """The model versions a stage publishes: (role, version number)."""
    if name == "init":
        return [("actor", 0), ("refiner", 0)]
    trains = stage(name).trains
    return [(trains, iteration + 1)] if trains is not None else []


def _config(paths: RunPaths) -> RunConfig:
    """The config a run was created with (its ``config.json``)."""
    return RunConfig.model_validate(read_json(paths.config)["config"])


def fork_plan(
    source: RunPaths, target: RunPaths, resolve: Resolver
) -> tuple[list[tuple[int, str]], str | None]:
    """The (iteration, stage) pairs of ``target``'s pipeline that ``source`` already did, in pipeline
    order, and why the first stage that is not reused is not (None when every stage is reused).

    A stage is reused when the source ran the same stage with the same settings and resolved
    settings, and everything it reads (``shared.stages.dependencies``) is itself reused: its inputs
    are then the same files. So a changed stage does not end the sharing for stages that do not
    read it: an actor objective ablation still reuses the refiner's training of that iteration.
    """
    return _plan(ForkPair(source, target, _config(source), _config(target)), resolve)


def _plan(pair: ForkPair, resolve: Resolver) -> tuple[list[tuple[int, str]], str | None]:
    if not _prompts_identical(pair.source, pair.target):
        return [], "the prompt shards differ"
    src_config, config = pair.source_config, pair.config
    src_graph = graph(src_config.stages, src_config.iterations, with_init=src_config.init is not None)
    target_graph = graph(config.stages, config.iterations, with_init=config.init is not None)
    reusable: list[tuple[int, str]] = []
    first_blocker: str | None = None
    for step, reads in target_graph.items():
        blocker = _reuse_blocker(pair, step, reads, src_graph, set(reusable), resolve)
        if blocker is None:
            reusable.append(step)
            continue
        log.info(
            "fork does not reuse a stage",
            extra={"event": "fork.stop", "iteration": step[0], "stage": step[1], "reason": blocker},
        )
        first_blocker = first_blocker or f"{step[1]}@{step[0]}: {blocker}"
    return reusable, first_blocker


def _inputs(config: RunConfig, step: Node) -> set[Node]:
    """The stages of the run whose output ``step`` reads, as its declared ``reads`` say.

    The dependency graph's edges, except a model version: its writers are
    :func:`~shared.runtime.fork_evaluations.version_writers`, so a stage 0 that trains only the
    refiner is not an input of a stage that reads actor v0 (the sampling of iteration 0). The
    scheduler still waits for stage 0 before any iteration; the fork needs only where data comes from.
    """
    iteration, name = step
    nodes: set[Node] = set()
    for read in stage(name).reads:
        version = VERSION_READ.match(read)
        if version is not None:
            number = iteration + (1 if version["plus"] else 0)
            nodes.update(version_writers(config, version["role"], number))
        else:
            nodes.update(producers(read, iteration, config.stages, with_init=config.init is not None))
    nodes.discard(step)
    return nodes


def _reuse_blocker(
    pair: ForkPair,
    step: Node,
    reads: tuple[Node, ...],
    src_graph: dict[Node, tuple[Node, ...]],
    reused: set[Node],
    resolve: Resolver,
) -> str | None:
    if step not in src_graph:
        return "the source's pipeline has no such stage"
    inputs = _inputs(pair.config, step)
    if _inputs(pair.source_config, step) != inputs:
        # e.g. the source assembled from refine trees this pipeline does not grow
        return "its inputs come from other stages in the source's pipeline"
    missing = [f"{name}@{t}" for t, name in reads if (t, name) in inputs and (t, name) not in reused]
    if missing:
        return f"it reads what {', '.join(missing)} wrote, which is not reused"
    return stage_reuse_blocker(pair, *step, resolve)


def shared_prefix(source: RunPaths, target: RunPaths, resolve: Resolver) -> list[tuple[int, str]]:
    """The (iteration, stage) pairs of ``target``'s pipeline that ``source`` already did."""
    return fork_plan(source, target, resolve)[0]


def fork_into(source: RunPaths, target: RunPaths, resolve: Resolver) -> list[tuple[int, str]]:
    """Link ``source``'s shared finished stages into the new run ``target``; returns what was reused.

    ``target`` must be freshly created (no stage done yet): forking into a run that has work of its
    own could mix two lineages.
    """
    if source.root.resolve() == target.root.resolve():
        raise ConfigError("--fork: the source run is the new run itself")
    if any(target.root.glob("iter_*")) or (target.root / "models").exists():
        raise ConfigError(f"--fork: {target.root} has stages of its own; fork only into a new run")
    pair = ForkPair(source, target, _config(source), _config(target))
    reused, stopped = _plan(pair, resolve)
    config = pair.config
    views = (pair.source_view, pair.view)
    evaluations = {
        iteration: seed_fork(
            source,
            target,
            (pair.source_config, config),
            iteration,
            reused,
            resolve(config, "eval"),
            views=views if None not in views else None,
        )
        for iteration, name in graph(config.stages, config.iterations, with_init=config.init is not None)
        if name == "eval" and (iteration, name) not in reused
    }
    for iteration, name in reused:
        src_dir = source.stage_dir(iteration, name)
        if src_dir.exists():
            _link_tree(src_dir, target.stage_dir(iteration, name))
            if pair.source_config.stage_hash(name) != config.stage_hash(name):  # reused by content
                _restamp(target, iteration, name, config.stage_hash(name))
        for role, version in _published(iteration, name):
            published = version_dir(source, role, version)
            if published.exists():
                _link_tree(published, version_dir(target, role, version))
    write_json_atomic(
        target.root / FORK_RECORD,
        {
            "source": str(source.root.resolve()),
            "source_run_id": source.run_id,
            "reused": [{"iteration": t, "stage": s} for t, s in reused],
            # evaluations of shared versions an eval stage that is not reused takes from the source
            "evaluations": [{"iteration": t, "kept": keys} for t, keys in evaluations.items() if keys],
            "stopped": stopped,
            "forked_at": dt.datetime.now(dt.UTC).isoformat(),
        },
    )
    target.note_change(f"forked from {source.run_id}")
    return reused


def _restamp(target: RunPaths, iteration: int, name: str, wanted: str) -> None:
    """Give the linked completion records of a stage reused by content (its data files lie
    elsewhere in the source run, so its hash differs) the new run's hash, without touching the
    source's files: a new file replaces the link. The worker then finds these shards done."""
    for done in target.stage_dir(iteration, name).glob("shard_*.done.json"):
        record = read_json(done)
        if record.get("config_hash") not in (None, wanted):
            record["config_hash"] = wanted
            write_json_atomic(done, record)  # a rename: the source's inode keeps its record


def reused_stages(paths: RunPaths) -> set[tuple[int, str]]:
    """The stages ``paths`` took from the run it was forked from (empty for a run made from scratch)."""
    record = paths.root / FORK_RECORD
    if not record.exists():
        return set()
    return {(r["iteration"], r["stage"]) for r in read_json(record).get("reused", [])}
