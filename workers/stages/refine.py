"""Stage 3 runner: tree-search refinement of every negative of a shard, all trees batched together."""

from __future__ import annotations

import logging
from collections import Counter

from shared.judges import build_judge
from shared.judging import JudgmentCache
from shared.records import JudgeRow, RefineCounts, ShardOutput, TreeRow
from shared.runtime.artifacts import read_jsonl, write_jsonl_atomic
from shared.runtime.partial import PartialShard
from shared.search import SearchRoot, Tree, search_trees
from shared.seeding import derive_seed

from .common import StageContext, metered, version_label

log = logging.getLogger(__name__)


def run_refine(ctx: StageContext) -> ShardOutput:
    config, spec, progress = ctx.config, ctx.spec, ctx.progress
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
    prompt_of_tree = {root.key: root.key.rsplit("#", 1)[0] for root in roots}
    # Trees an interrupted attempt of this shard finished are kept, not searched again: a 64-tree
    # shard of a 135M model takes tens of minutes on a CPU, and a stop must not lose all of it.
    partial = PartialShard(ctx.output_shard, f"{config.stage_hash('refine')}:{version_label(version)}")
    done: dict[str, TreeRow] = {
        key: TreeRow.from_record(record) for key, record in partial.load().items() if key in prompt_of_tree
    }
    todo = [root for root in roots if root.key not in done]
    if done:
        log.info(
            "refine shard resumed",
            extra={"event": "refine.resumed", "kept_trees": len(done), "trees_left": len(todo)},
        )

    def keep(tree: Tree) -> None:
        row = tree.row(prompt_of_tree[tree.key])
        done[tree.key] = row
        partial.add(tree.key, row.as_record())

    j, s = config.judge, config.search
    with metered(ctx.engines.engine_for("refiner", version), progress, "tree search") as engine:
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

    rows = [done[root.key] for root in roots]  # the shard's order, whichever attempt grew each tree
    write_jsonl_atomic(ctx.output_shard, [row.as_record() for row in rows])
    partial.remove()
    statuses = Counter(row.status for row in rows)
    counts = RefineCounts(
        trees=len(rows),
        successes=statuses["success"],
        expansions=sum(row.expansions for row in rows),
        children=sum(len(row.nodes) - 1 for row in rows),
        parse_failures=sum(row.parse_failures for row in rows),
        dropped_unparsed=sum(row.dropped_unparsed for row in rows),
        dropped_ties=sum(row.dropped_ties for row in rows),
        cache_hits=cache.hits - hits_before,
        **{f"status_{status}": n for status, n in statuses.items()},
    )
    return ShardOutput(
        models={"refiner": version_label(version)}, counts=counts.as_record(), engine=engine.stats.as_dict()
    )
