"""Stage 1 runner: the actor samples K responses per prompt of a shard, in one engine call."""

from __future__ import annotations

from shared.engine import GenerationRequest
from shared.records import PromptRow, SampleCounts, SampleRow, ShardOutput
from shared.runtime.artifacts import read_jsonl, write_jsonl_atomic
from shared.seeding import derive_seed

from .common import StageContext, metered, version_label


def run_sample(ctx: StageContext) -> ShardOutput:
    config, spec = ctx.config, ctx.spec
    version = ctx.version("actor")
    prompts = [PromptRow.from_record(r) for r in read_jsonl(ctx.paths.prompt_shard(spec.shard))]
    s = config.sample
    requests = [
        GenerationRequest(
            messages=[{"role": "user", "content": p.prompt}],
            n=s.num_responses,
            temperature=s.temperature,
            top_p=s.top_p,
            max_new_tokens=s.max_new_tokens,
            seed=derive_seed(config.seed, "sample", spec.iteration, p.id),
        )
        for p in prompts
    ]
    with metered(ctx.engines.engine_for("actor", version), ctx.progress, "sampling") as engine:
        outputs = engine.generate(requests)
    rows = [
        SampleRow(id=p.id, prompt=p.prompt, metadata=p.metadata, responses=responses)
        for p, responses in zip(prompts, outputs, strict=True)
    ]
    write_jsonl_atomic(ctx.output_shard, [r.as_record() for r in rows])
    counts = SampleCounts(prompts=len(rows), responses=sum(len(r.responses) for r in rows))
    return ShardOutput(
        models={"actor": version_label(version)}, counts=counts.as_record(), engine=engine.stats.as_dict()
    )
