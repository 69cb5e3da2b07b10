"""Stage 3 runner: tree-search refinement of every negative of a shard, all trees batched together."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from shared.engine import EngineStats
from shared.judges import build_judge
from shared.judging import JudgmentCache
from shared.records import JudgeRow, RefineCounts, ShardOutput, TreeRow
from shared.runtime.artifacts import read_jsonl, write_jsonl_atomic
from shared.runtime.partial import PartialShard
from shared.runtime.versions import ModelVersion
from shared.search import SearchRoot, Tree, search_trees
from shared.seeding import derive_seed

from .common import StageContext, metered, version_label

log = logging.getLogger("spar.stages")  # in the run's event log, with the stage events


def run_refine(ctx: StageContext) -> ShardOutput:
    config = ctx.config
    version = ctx.version("refiner")
    rows = [JudgeRow.from_record(r) for r in read_jsonl(ctx.input_shard("judge"))]
    cache = JudgmentCache()
    roots: list[SearchRoot] = []
    for row in rows:
        for r in row.responses:  # stage-2 verdicts are reused
            cache.put(r.judgment(row.prompt))
        for index in row.negatives:
            negative = row.responses[index]
            assert negative.kept is not None, "a negative is a decided (failed) response"
            roots.append(
                SearchRoot(
                    key=f"{row.id}#{index}", prompt=row.prompt, response=negative.text, judgment=negative.kept
                )
            )
    # Trees an interrupted attempt of this shard finished are kept, not searched again: a 64-tree
    # shard of a 135M model takes tens of minutes on a CPU, and a stop must not lose all of it.
    partial = PartialShard(ctx.output_shard, f"{config.stage_hash('refine')}:{version_label(version)}")
    done: dict[str, TreeRow] = {}
    spent = EngineStats()  # what earlier attempts' engines spent up to each tree they kept
    keys = {root.key for root in roots}
    for key, item in partial.load().items():
        if key in keys:
            tree_record, engine_counts = kept_tree(item)
            done[key] = TreeRow.from_record(tree_record)
            spent = spent.plus(EngineStats.from_dict(engine_counts))
    todo = [root for root in roots if root.key not in done]
    if done:
        log.info(
            "refine shard resumed",
            extra={"event": "refine.resumed", "kept_trees": len(done), "trees_left": len(todo)},
        )
    hits = 0
    if todo:  # a retry after a crash between the last tree and the shard's write loads no engine
        engine_stats, hits = search_remaining(ctx, version, rows, roots, todo, cache, partial, done)
        spent = spent.plus(engine_stats)

    trees = [done[root.key] for root in roots]  # the shard's order, whichever attempt grew each tree
    write_jsonl_atomic(ctx.output_shard, [tree.as_record() for tree in trees])
    partial.remove()
    statuses = Counter(tree.status for tree in trees)
    counts = RefineCounts(
        trees=len(trees),
        successes=statuses["success"],
        expansions=sum(tree.expansions for tree in trees),
        children=sum(len(tree.nodes) - 1 for tree in trees),
        parse_failures=sum(tree.parse_failures for tree in trees),
        dropped_unparsed=sum(tree.dropped_unparsed for tree in trees),
        dropped_ties=sum(tree.dropped_ties for tree in trees),
        unfaithful=sum(tree.unfaithful for tree in trees),
        cache_hits=hits,
        **{f"status_{status}": n for status, n in statuses.items()},
    )
    return ShardOutput(
        models={"refiner": version_label(version)}, counts=counts.as_record(), engine=spent.as_dict()
    )


def kept_tree(item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A partial line's tree and the engine counts charged to it (lines written before the counts
    were kept hold the tree alone)."""
    if "tree" in item:
        return item["tree"], item.get("engine", {})
    return item, {}


def search_remaining(
    ctx: StageContext,
    version: ModelVersion,
    rows: list[JudgeRow],
    roots: list[SearchRoot],
    todo: list[SearchRoot],
    cache: JudgmentCache,
    partial: PartialShard,
    done: dict[str, TreeRow],
) -> tuple[EngineStats, int]:
    """Grow the trees not kept yet, keeping each as it finishes; returns what the engine spent and the
    judgment-cache hits.

    Each kept tree carries the engine counts since the tree kept before it, so a retry's shard record
    still counts the tokens the interrupted attempt spent (batched levels cannot be split per tree:
    the counts are charged to whichever tree finishes next).
    """
    config, spec, progress = ctx.config, ctx.spec, ctx.progress
    j, s = config.judge, config.search
    with metered(ctx.engines.engine_for("refiner", version), progress, "tree search") as engine:
        charged = EngineStats()

        def keep(tree: Tree) -> None:
            nonlocal charged
            row = tree.row(tree.key.rsplit("#", 1)[0])  # the key is <prompt id>#<response index>
            done[tree.key] = row
            now = engine.stats.snapshot()
            partial.add(tree.key, {"tree": row.as_record(), "engine": now.minus(charged).as_dict()})
            charged = now

        seed = derive_seed(config.seed, "search-judge", spec.iteration)
        metadata = {row.prompt: row.metadata for row in rows}
        judge = build_judge(
            j, engine, seed=seed, tie_retries=s.tie_retries, metadata_by_prompt=metadata, cache=cache
        )
        hits_before = cache.hits
        on_step = (
            None
            if progress is None
            else (
                lambda step, running: progress(f"tree search step {step}", len(roots) - running, len(roots))
            )
        )
        search_trees(
            todo,
            engine,
            judge,
            s,
            seed=derive_seed(config.seed, "search", spec.iteration),
            on_step=on_step,
            on_tree_done=keep,
        )
    return engine.stats, cache.hits - hits_before
