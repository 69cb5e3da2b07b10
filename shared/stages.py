"""The stage table: every stage of an iteration defined once, and everything else reads it.

A stage's name, the queue (worker role) that runs it, whether it is cut into one shard per prompt
shard, which config sections determine its output (the hash recorded in its manifests), and what it
reads and writes. The config's ``stages`` field, the stage hashes, the scheduler's queues and shard
counts, both executors' pipeline order and the summary all come from :data:`STAGE_TABLE`; the
runner of each stage is registered under the same name in ``workers.stages``.

Adding a stage (``docs/architecture.md``, "Adding a stage", says the same): always

1. a :class:`StageDef` here, in pipeline order;
2. its stage function ``run_<name>(ctx: StageContext) -> ShardOutput`` in ``workers/stages/<name>.py``;
3. that function registered under the stage's name in ``RUNNERS`` (``workers/stages/__init__.py``);

and, when the stage needs them, the records of the rows it writes and its counts
(``shared/records.py``), its settings section (``shared/config.py``; name it in ``hash_sections``),
and its line in the iteration summary (``services/summary.py``). The queues, shard counts, stage
hashes, both executors, the scheduler and the stage's ``.done.json`` and manifest follow from the
table and from ``run_stage`` without a change.

The ``reads`` of every stage make the iteration a dependency graph, not a line: a stage can start as
soon as the stages producing what it reads are complete (:func:`dependencies`), so ``train_actor``
and ``train_refiner`` run at once, and iteration t+1's ``sample`` starts while iteration t's refiner
still trains. The pipeline order (:func:`pipeline`) is one topological order of that graph: the one
the local executor and the scheduler's serial mode follow.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

QueueRole = Literal["actor", "refiner", "train"]


@dataclass(frozen=True)
class StageDef:
    """One stage of the pipeline (see ``docs/method.md`` for what each does)."""

    name: str
    queue: QueueRole
    """The RQ queue, hence the worker role, that runs the stage's shards."""
    sharded: bool
    """True: one shard per prompt shard; False: a single shard over the whole iteration."""
    hash_sections: Mapping[str, str]
    """Hash key -> RunConfig field whose settings determine the stage's output."""
    reads: tuple[str, ...]
    """Everything the stage's runner opens, as paths relative to the run directory (``iter_t/<stage>/...``:
    a stage's output in the same iteration; ``models/<role>/v<t>`` or ``v<t+1>``: a model version;
    ``prompts/...``: the prompt shards) or as config fields naming a file outside the run. The
    dependency graph (:func:`dependencies`) is derived from these and from nothing else, and
    ``tests/test_stage_graph.py`` fails when a runner opens something not declared here."""
    writes: tuple[str, ...]
    default: bool = True
    """Part of the default pipeline (opt-in stages need an extra or a particular objective)."""
    selectable: bool = True
    """Can be named in the config's ``stages``; stage 0 (``init``) runs once when ``init`` is set."""
    trains: Literal["actor", "refiner"] | None = None
    """The role whose next version the stage publishes (training stages)."""


STAGE_TABLE: tuple[StageDef, ...] = (
    StageDef(
        "init",
        queue="train",
        sharded=False,
        hash_sections={"actor": "actor", "refiner": "refiner", "init": "init"},
        reads=("init.actor_data", "init.refiner_data"),
        writes=("models/<role>/v0",),
        default=False,
        selectable=False,
    ),
    StageDef(
        "sample",
        queue="actor",
        sharded=True,
        hash_sections={"actor": "actor", "sample": "sample"},
        reads=("prompts/shard_N.jsonl", "models/actor/v<t>"),
        writes=("iter_t/sample/shard_N.jsonl",),
    ),
    StageDef(
        "judge",
        queue="refiner",
        sharded=True,
        hash_sections={"refiner": "refiner", "judge": "judge"},
        reads=("iter_t/sample/shard_N.jsonl", "models/refiner/v<t>"),
        writes=("iter_t/judge/shard_N.jsonl",),
    ),
    StageDef(
        "refine",
        queue="refiner",
        sharded=True,
        hash_sections={"refiner": "refiner", "judge": "judge", "search": "search"},
        reads=("iter_t/judge/shard_N.jsonl", "models/refiner/v<t>"),
        writes=("iter_t/refine/shard_N.jsonl",),
    ),
    StageDef(
        "assemble",
        queue="train",
        sharded=False,
        hash_sections={"data": "data"},
        reads=("iter_t/judge/shard_*.jsonl", "iter_t/refine/shard_*.jsonl"),
        writes=("iter_t/assemble/pairs.jsonl", "iter_t/assemble/rft.jsonl"),
    ),
    StageDef(
        "iopo_groups",
        queue="refiner",
        sharded=False,
        hash_sections={
            "refiner": "refiner",
            "judge": "judge",
            "search": "search",
            "data": "data",
            "iopo": "iopo",
        },
        reads=("iter_t/assemble/pairs.jsonl", "iter_t/judge/shard_*.jsonl", "models/refiner/v<t>"),
        writes=("iter_t/iopo_groups/shard_0.jsonl",),
        default=False,
    ),
    StageDef(
        "train_actor",
        queue="train",
        sharded=False,
        hash_sections={"actor": "actor", "train": "train_actor"},
        # pairs.jsonl, or the IOPO groups under objective "iopo": both are declared, so with the
        # iopo_groups stage configured the training waits for it whatever the objective
        reads=("iter_t/assemble/pairs.jsonl", "iter_t/iopo_groups/shard_0.jsonl", "models/actor/v<t>"),
        writes=("models/actor/v<t+1>", "checkpoints/actor-v<t+1>"),
        trains="actor",
    ),
    StageDef(
        "train_refiner",
        queue="train",
        sharded=False,
        hash_sections={"refiner": "refiner", "train": "train_refiner"},
        reads=("iter_t/assemble/rft.jsonl", "models/refiner/v<t>"),
        writes=("models/refiner/v<t+1>", "checkpoints/refiner-v<t+1>"),
        trains="refiner",
    ),
    StageDef(
        "eval",
        queue="actor",
        sharded=False,
        hash_sections={"actor": "actor", "refiner": "refiner", "judge": "judge", "evaluation": "evaluation"},
        reads=(
            "models/actor/v<t>",
            "models/actor/v<t+1>",
            "models/refiner/v<t>",
            "models/refiner/v<t+1>",
            "evaluation.judge_data",
            "evaluation.validation_prompts",
        ),
        writes=("iter_t/eval/shard_0.jsonl",),
        default=False,
    ),
)

STAGE_DEFS: dict[str, StageDef] = {s.name: s for s in STAGE_TABLE}
_TABLE_INDEX: dict[str, int] = {s.name: k for k, s in enumerate(STAGE_TABLE)}
STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.selectable)
"""The stages a config may list, in pipeline order."""
DEFAULT_STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.selectable and s.default)
TRAINING_STAGES: tuple[str, ...] = tuple(s.name for s in STAGE_TABLE if s.trains is not None)


def stage(name: str) -> StageDef:
    """The definition of ``name``; a clear error for a name the table does not hold."""
    try:
        return STAGE_DEFS[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages are {list(STAGE_DEFS)}") from None


def pipeline(
    stages: list[str] | tuple[str, ...], iterations: int, with_init: bool
) -> Iterator[tuple[int, str]]:
    """Every (iteration, stage) of a run in the order they must complete: stage 0, then each iteration."""
    if with_init:
        yield 0, "init"
    for iteration in range(iterations):
        for name in stages:
            yield iteration, name


Node = tuple[int, str]
"""(iteration, stage): one vertex of a run's dependency graph."""

VERSION_READ = re.compile(r"^models/(?P<role>actor|refiner)/v<t(?P<plus>\+1)?>$")
STAGE_READ = re.compile(r"^iter_t/(?P<stage>[a-z_]+)/")


def producers(read: str, iteration: int, stages: Collection[str], with_init: bool) -> list[Node]:
    """The (iteration, stage) of a run that writes what ``read`` names, when the run configures it.

    ``iter_t/<stage>/...`` is written by that stage of the same iteration; ``models/<role>/v<k>`` by
    ``train_<role>`` of iteration k-1, or for k = 0 by ``init`` when the run has it (else it is the
    configured model); prompt shards and config-named files exist before any stage runs. A producer
    the run does not configure is not a dependency: its output never appears, and the stage that
    reads it fails or takes its fallback exactly as it does in pipeline order. A model version no
    configured stage trains is awaited until its iteration's last stage: the role then plays v0
    (``shared.runtime.versions.version_for``), which needs no wait, but the wait keeps every
    iteration behind the one before, so that a walk of the graph (``services.scheduler.frontier``)
    stops at the work that exists and never runs ahead through an iteration count a client asked for.
    """
    match = STAGE_READ.match(read)
    if match is not None:
        name = match["stage"]
        if name not in STAGE_DEFS:
            raise ValueError(f"read {read!r} names no stage; stages are {list(STAGE_DEFS)}")
        return [(iteration, name)] if name in stages else []
    match = VERSION_READ.match(read)
    if match is not None:
        version = iteration + (1 if match["plus"] else 0)
        if version == 0:
            return [(0, "init")] if with_init else []
        trainer = f"train_{match['role']}"
        if trainer in stages:
            return [(version - 1, trainer)]
        # no stage writes the version (the role plays v0): wait for iteration k-1's last stage all
        # the same, which keeps the iterations in order (see the docstring)
        last = [name for name in STAGE_DEFS if name in stages][-1:]
        return [(version - 1, last[0])] if last else []
    if read.startswith("models/"):
        raise ValueError(f"read {read!r}: a model read is models/actor|refiner/v<t> or v<t+1>")
    return []  # the prompt shards, or a config field naming a file outside the run


def dependencies(name: str, iteration: int, stages: Collection[str], with_init: bool) -> tuple[Node, ...]:
    """The stages of the run that must be complete before ``name`` of ``iteration`` may start.

    Derived from the stage's declared ``reads`` only (never from a list of what may overlap), in
    pipeline order, without duplicates and never the stage itself.
    """
    out: list[Node] = []
    for read in stage(name).reads:
        for node in producers(read, iteration, stages, with_init):
            if node != (iteration, name) and node not in out:
                out.append(node)
    return tuple(sorted(out, key=lambda n: (n[0], _TABLE_INDEX[n[1]])))  # pipeline order


def graph(
    stages: list[str] | tuple[str, ...], iterations: int, with_init: bool
) -> dict[Node, tuple[Node, ...]]:
    """Every (iteration, stage) of a run, in pipeline order, with its dependencies."""
    return {
        (t, name): dependencies(name, t, stages, with_init)
        for t, name in pipeline(stages, iterations, with_init)
    }
