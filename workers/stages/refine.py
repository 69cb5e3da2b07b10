"""Stage 3 runner: tree-search refinement of every negative of a shard, all trees batched together."""

from __future__ import annotations

from collections import Counter

from shared.judges import build_judge
from shared.judging import JudgmentCache
from shared.records import JudgeRow, RefineCounts, ShardOutput
from shared.runtime.artifacts import read_jsonl, write_jsonl_atomic
from shared.search import SearchRoot, TreeStatus, search_trees
from shared.seeding import derive_seed

from .common import StageContext, metered, version_label


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
        trees = search_trees(
            roots, engine, judge, s, seed=derive_seed(config.seed, "search", spec.iteration), on_step=on_step
        )

    write_jsonl_atomic(ctx.output_shard, [t.row(prompt_of_tree[t.key]).as_record() for t in trees])
    statuses = Counter(t.status for t in trees)
    counts = RefineCounts(
        trees=len(trees),
        successes=statuses[TreeStatus.SUCCESS],
        expansions=sum(t.expansions for t in trees),
        children=sum(len(t.nodes) - 1 for t in trees),
        parse_failures=sum(t.parse_failures for t in trees),
        dropped_unparsed=sum(t.dropped_unparsed for t in trees),
        dropped_ties=sum(t.dropped_ties for t in trees),
        cache_hits=cache.hits - hits_before,
        **{f"status_{k.value}": v for k, v in statuses.items()},
    )
    return ShardOutput(
        models={"refiner": version_label(version)}, counts=counts.as_record(), engine=engine.stats.as_dict()
    )
