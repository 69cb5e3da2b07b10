"""Stage 2 runner: the refiner judges every sampled response of a shard; failed ones become negatives."""

from __future__ import annotations

from shared.judges import build_judge
from shared.negatives import select_negatives
from shared.records import JudgeCounts, JudgedResponseRow, JudgeRow, SampleRow, ShardOutput
from shared.runtime.artifacts import read_jsonl, write_jsonl_atomic
from shared.seeding import derive_seed, rng_for
from shared.verdict import Verdict

from .common import StageContext, metered, version_label


def run_judge(ctx: StageContext) -> ShardOutput:
    config, spec = ctx.config, ctx.spec
    version = ctx.version("refiner")
    rows = [SampleRow.from_record(r) for r in read_jsonl(ctx.input_shard("sample"))]
    j = config.judge
    with metered(ctx.engines.engine_for("refiner", version), ctx.progress, "judging") as engine:
        # stage 2 drops ties (docs/method.md): no re-judging
        metadata = {row.prompt: row.metadata for row in rows}
        judge = build_judge(
            j,
            engine,
            seed=derive_seed(config.seed, "judge", spec.iteration),
            tie_retries=0,
            metadata_by_prompt=metadata,
        )
        items = [(row.prompt, text) for row in rows for text in row.responses]
        judgments = iter(judge.judge(items))
        agreement = judge.agreement(items, j.agreement_sample)  # {} unless the backend compares two judges

    counts = JudgeCounts()
    out: list[JudgeRow] = []
    for row in rows:
        judged: list[JudgedResponseRow] = []
        for text in row.responses:
            judgment = next(judgments)
            judged.append(JudgedResponseRow.of(text, judgment))
            counts.invalid_judgments += judgment.vote.n_invalid
            counts.dissent += int(judgment.vote.dissent)
            if judgment.label is Verdict.PASS:
                counts.pass_ += 1
            elif judgment.label is Verdict.FAIL:
                counts.fail += 1
            else:
                counts.undecided += 1
        failed = [i for i, r in enumerate(judged) if r.label == Verdict.FAIL]
        negatives = select_negatives(
            failed, j.negatives_per_prompt, rng_for(config.seed, "negatives", spec.iteration, row.id)
        )
        counts.prompts += 1
        counts.responses += len(judged)
        counts.prompts_all_pass += int(all(r.label == Verdict.PASS for r in judged))
        counts.prompts_with_negatives += int(bool(negatives))
        counts.negatives += len(negatives)
        out.append(
            JudgeRow(
                id=row.id, prompt=row.prompt, metadata=row.metadata, responses=judged, negatives=negatives
            )
        )
    counts = counts.model_copy(update=agreement)
    write_jsonl_atomic(ctx.output_shard, [r.as_record() for r in out])
    return ShardOutput(
        models={"refiner": version_label(version)}, counts=counts.as_record(), engine=engine.stats.as_dict()
    )
