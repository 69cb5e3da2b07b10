"""Stage 4 runner: DPO pairs and the RFT mix of a whole iteration (one shard: caps are global)."""

from __future__ import annotations

from shared.errors import MissingStageOutputError  # noqa: F401  (also importable from here)
from shared.pairs import JudgedResponse, assemble
from shared.records import JudgeRow, ShardOutput, TreeRow
from shared.runtime.artifacts import read_jsonl, write_jsonl_atomic
from shared.seeding import derive_seed

from .common import StageContext


def run_assemble(ctx: StageContext) -> ShardOutput:
    paths, config, spec = ctx.paths, ctx.config, ctx.spec
    trees: list[tuple[str, TreeRow]] = []
    stage2: list[JudgedResponse] = []
    # pairs from independent samples (the ablation) need no trees; trees still feed the RFT mix
    use_trees = config.data.pairs_from == "refinement" or "refine" in config.stages
    needed = ("judge", "refine") if use_trees else ("judge",)
    for shard in range(paths.num_prompt_shards()):
        for stage in needed:
            if not paths.shard_done(spec.iteration, stage, shard).exists():
                raise MissingStageOutputError(
                    f"iteration {spec.iteration}: shard {shard} of stage '{stage}' is not done; "
                    f"run the '{stage}' stage (include it in `stages`) before 'assemble'"
                )
        for raw in read_jsonl(ctx.input_shard("judge", shard)):
            row = JudgeRow.from_record(raw)
            for r in row.responses:
                stage2.append(JudgedResponse(row.id, row.prompt, r.text, r.judgment(row.prompt)))
        for raw in read_jsonl(ctx.input_shard("refine", shard)) if use_trees else ():
            tree = TreeRow.from_record(raw)
            trees.append((tree.prompt_id, tree))
        ctx.report("assembling", shard + 1, paths.num_prompt_shards())

    data = assemble(
        trees,
        stage2,
        config.data.caps,
        seed=derive_seed(config.seed, "assemble", spec.iteration),
        max_pairs=config.data.max_pairs,
        pairs_from=config.data.pairs_from,
    )
    write_jsonl_atomic(paths.data_file(spec.iteration, "pairs.jsonl"), [p.as_record() for p in data.pairs])
    write_jsonl_atomic(paths.data_file(spec.iteration, "rft.jsonl"), [e.as_record() for e in data.rft])
    counts = data.counts.as_record()
    write_jsonl_atomic(ctx.output_shard, [counts])
    return ShardOutput(counts=counts)
