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
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
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
        reads=("prompts/shard_N.jsonl",),
        writes=("iter_t/sample/shard_N.jsonl",),
    ),
    StageDef(
        "judge",
        queue="refiner",
        sharded=True,
        hash_sections={"refiner": "refiner", "judge": "judge"},
        reads=("iter_t/sample/shard_N.jsonl",),
        writes=("iter_t/judge/shard_N.jsonl",),
    ),
    StageDef(
        "refine",
        queue="refiner",
        sharded=True,
        hash_sections={"refiner": "refiner", "judge": "judge", "search": "search"},
        reads=("iter_t/judge/shard_N.jsonl",),
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
        reads=("iter_t/assemble/pairs.jsonl", "iter_t/judge/shard_*.jsonl"),
        writes=("iter_t/iopo_groups/shard_0.jsonl",),
        default=False,
    ),
    StageDef(
        "train_actor",
        queue="train",
        sharded=False,
        hash_sections={"actor": "actor", "train": "train_actor"},
        reads=("iter_t/assemble/pairs.jsonl or iter_t/iopo_groups/shard_0.jsonl",),
        writes=("models/actor/v<t+1>",),
        trains="actor",
    ),
    StageDef(
        "train_refiner",
        queue="train",
        sharded=False,
        hash_sections={"refiner": "refiner", "train": "train_refiner"},
        reads=("iter_t/assemble/rft.jsonl",),
        writes=("models/refiner/v<t+1>",),
        trains="refiner",
    ),
    StageDef(
        "eval",
        queue="actor",
        sharded=False,
        hash_sections={"actor": "actor", "refiner": "refiner", "judge": "judge", "evaluation": "evaluation"},
        reads=("models/<role>/v<t+1>", "evaluation.judge_data"),
        writes=("iter_t/eval/shard_0.jsonl",),
        default=False,
    ),
)

STAGE_DEFS: dict[str, StageDef] = {s.name: s for s in STAGE_TABLE}
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
