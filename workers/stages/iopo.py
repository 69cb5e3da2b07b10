"""The `iopo_groups` stage: IOPO groups (x, y_refined, x', y_neg) from the iteration's DPO pairs.

With ``judge.backend: llm`` the refiner rewrites x and judges both responses under x' (SPaR's
judge). With a verifier backend, prompts carrying IFEval metadata get x' written by program
(:mod:`shared.evaluation.iopo_rewrite`) and checked by the verifier; the others are rewritten and
judged by the refiner under ``verifier_then_llm`` and dropped under ``verifier``.
"""

from __future__ import annotations

from shared.iopo import PairForGroup, build_groups
from shared.judges import backend_of, build_judge
from shared.records import JudgeRow, PairRow, ShardOutput
from shared.runtime.artifacts import read_jsonl, write_jsonl_atomic
from shared.seeding import derive_seed

from .common import StageContext, metered, version_label


def run_iopo_groups(ctx: StageContext) -> ShardOutput:
    paths, config, spec = ctx.paths, ctx.config, ctx.spec
    version = ctx.version("refiner")
    pairs_file = paths.data_file(spec.iteration, "pairs.jsonl")
    if not pairs_file.exists():
        raise FileNotFoundError(f"{pairs_file} is missing: it is written by the 'assemble' stage")
    pairs = [
        PairForGroup(p.tree, p.prompt, p.chosen, p.rejected, p.rejected_judgment)
        for p in map(PairRow.from_record, read_jsonl(pairs_file))
    ]
    metadata: dict[str, object] = {}
    for shard in range(paths.num_prompt_shards()):
        for row in map(JudgeRow.from_record, read_jsonl(ctx.input_shard("judge", shard))):
            metadata[row.prompt] = row.metadata
    backend = backend_of(config.judge)
    rewriter = None
    if backend.checks_metadata:
        from shared.evaluation.iopo_rewrite import VerifiableRewriter

        rewriter = VerifiableRewriter(
            metadata, seed=derive_seed(config.seed, "iopo-verifiable", spec.iteration)
        )
    with metered(ctx.engines.engine_for("refiner", version), ctx.progress, "IOPO rewrites") as engine:
        judge = build_judge(
            config.judge,
            engine,
            seed=derive_seed(config.seed, "iopo-judge", spec.iteration),
            tie_retries=config.search.tie_retries,
            metadata_by_prompt=metadata,  # the rewriter adds each x' it writes, so the verifier judges it
        )
        result = build_groups(
            pairs,
            engine,
            judge,
            seed=derive_seed(config.seed, "iopo", spec.iteration),
            max_new_tokens=config.search.max_new_tokens,
            temperature=config.search.temperature,
            parse_retries=config.search.parse_retries,
            rewrites=config.iopo.rewrites,
            rewriter=rewriter,
            llm_fallback=not backend.needs_metadata,
            min_task_overlap=config.iopo.min_task_overlap,
        )
    groups = result.groups
    for group in groups:
        if group.x2_source == "verifier":
            group.x2_metadata = metadata[group.x2]  # type: ignore[assignment]
    write_jsonl_atomic(ctx.output_shard, [g.as_record() for g in groups])
    return ShardOutput(
        models={"refiner": version_label(version)}, counts=dict(result.counts), engine=engine.stats.as_dict()
    )
