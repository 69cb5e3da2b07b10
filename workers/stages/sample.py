"""Stage 1 runner: the actor samples K responses per prompt of a shard, in one engine call."""

from __future__ import annotations

import time

from shared.engine import GenerationRequest
from shared.records import PromptRow, SampleCounts, SampleRow
from shared.runtime.artifacts import RunPaths, read_jsonl, write_jsonl_atomic
from shared.runtime.versions import version_for
from shared.seeding import derive_seed

from .common import EngineProvider, Progress, StageResult, StageSpec, load_config, metered, version_label


def run_sample(
    paths: RunPaths, spec: StageSpec, engines: EngineProvider, progress: Progress | None
) -> StageResult:
    config = load_config(paths)
    version = version_for(paths, config, "actor", spec.iteration)
    prompts = [PromptRow.from_record(r) for r in read_jsonl(paths.prompt_shard(spec.shard))]
    s = config.sample
    started = time.perf_counter()
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
    with metered(engines.engine_for("actor", version), progress, "sampling") as engine:
        outputs = engine.generate(requests)
    rows = [
        SampleRow(id=p.id, prompt=p.prompt, metadata=p.metadata, responses=responses)
        for p, responses in zip(prompts, outputs, strict=True)
    ]
    write_jsonl_atomic(paths.shard(spec.iteration, "sample", spec.shard), [r.as_record() for r in rows])
    counts = SampleCounts(prompts=len(rows), responses=sum(len(r.responses) for r in rows))
    return StageResult(
        models={"actor": version_label(version)},
        counts=counts.as_record(),
        engine=engine.stats.as_dict(),
        seconds=time.perf_counter() - started,
    )
