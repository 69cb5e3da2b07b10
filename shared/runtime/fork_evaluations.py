"""A fork's eval stage takes the source run's evaluations of the model versions both runs share.

An ablation that trains a new actor must score it, but v0 and a refiner whose training the fork
reused were scored in the source run already, with settings the fork may share
(``shared.evaluation.kept.evaluation_settings``). :func:`seed_fork` writes those scores into the
fork's eval stage as kept items (``shared.runtime.partial``), the way an interrupted attempt of
the stage would have left them; the stage then scores only the rest. Each IFEval pass of a 135M
model costs a CPU a quarter of an hour.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from shared.config import RunConfig
from shared.evaluation.kept import INPUT_OF_KIND, ROLE_OF_KIND, evaluation_settings, kept_key
from shared.runtime.artifacts import RunPaths, read_json, read_jsonl
from shared.runtime.data_inputs import differing_records, recorded_inputs
from shared.runtime.partial import PartialShard
from shared.stages import Node, producers

log = logging.getLogger("spar.fork")  # in the run's event log


def version_writers(config: RunConfig, role: str, number: int) -> list[Node]:
    """The stages of a run configured by ``config`` that write model ``role`` v<number>.

    As :func:`shared.stages.producers` says, except that v0 of a role stage 0 does not train (its
    ``init`` has no data for it) is written by nothing: it is the configured model, named in the
    settings, as in a run without stage 0. A run whose stage 0 trains only the refiner so shares
    its actor v0, and the stages that read only that, with a run that has no stage 0.
    """
    writers = producers(f"models/{role}/v<t>", number, config.stages, with_init=config.init is not None)
    if writers == [(0, "init")] and getattr(config.init, f"{role}_data", None) is None:
        return []
    return writers


def _same_version(
    role: str, number: int, source: RunConfig, target: RunConfig, reused: Collection[Node]
) -> bool:
    """Whether model ``role`` v<number> is the same files in both runs: written by the same stages,
    every one of them reused by the fork (or by none: the configured model, named in the settings)."""
    made_here = version_writers(target, role, number)
    made_there = version_writers(source, role, number)
    return made_here == made_there and all(node in reused for node in made_here)


def seed_fork(
    source: RunPaths,
    target: RunPaths,
    configs: tuple[RunConfig, RunConfig],
    iteration: int,
    reused: Collection[Node],
    resolved_here: dict[str, Any],
    views: tuple[RunConfig, RunConfig] | None = None,
) -> list[str]:
    """Write into ``target``'s eval stage of ``iteration`` the source's finished evaluations of the
    versions both runs share with equal settings; returns their keys (empty when none qualify).
    ``configs``: the source's and the target's run configs.

    ``resolved_here`` is what this machine resolves the eval stage to (engine release, dtype): an
    evaluation computed with other resolved settings is not the same numbers. ``views``: both
    configs with their data files' paths replaced by the recorded digests
    (``shared.runtime.data_inputs.content_view``), compared instead of the configs when given, so
    the same held-out pairs at another path count as the same settings.
    """
    out, done = source.shard(iteration, "eval", 0), source.shard_done(iteration, "eval", 0)
    if not (out.exists() and done.exists()):
        return []
    record = read_json(done)
    if record.get("resolved") != resolved_here:
        return []
    src_config, config = configs
    compared = views or configs
    inputs = (recorded_inputs(source), recorded_inputs(target))  # read once, not per evaluation
    metrics = record.get("metrics", {})
    partial = PartialShard(target.shard(iteration, "eval", 0), config.stage_hash("eval"))
    seeded: list[str] = []
    for row in read_jsonl(out):
        kind = row.get("kind")
        if kind not in ROLE_OF_KIND:
            continue
        version = str(row["version"]).split(" ", 1)[0]  # "v1 (/runs/x/models/actor/v1)" -> "v1"
        scores = [m for m in metrics.get(kind, []) if m.get("version") == version]
        if len(scores) != 1 or evaluation_settings(compared[0], kind) != evaluation_settings(
            compared[1], kind
        ):
            continue
        if not _same_version(ROLE_OF_KIND[kind], int(version[1:]), src_config, config, reused):
            continue
        if kind in INPUT_OF_KIND and differing_records(*inputs, [INPUT_OF_KIND[kind]]):
            continue  # the same path, edited in between: other pairs or prompts were scored there
        # the eval stage labels the row with this run's own model path when it takes it
        partial.add(kept_key(kind, version), {"metrics": scores[0], "row": {**row, "version": version}})
        seeded.append(kept_key(kind, version))
    if seeded:
        log.info(
            "fork takes evaluations",
            extra={"event": "fork.evaluations", "iteration": iteration, "kept": seeded},
        )
    return seeded
