"""The `iopo_groups` stage: IOPO groups (x, y_refined, x', y_neg) from the iteration's DPO pairs."""

from __future__ import annotations

import time

from shared.iopo import PairForGroup, build_groups
from shared.judging import Judge
from shared.seeding import derive_seed

from ..artifacts import RunPaths, read_jsonl, write_jsonl_atomic
from ..versions import version_for
from .common import EngineProvider, Progress, StageResult, StageSpec, load_config, metered, version_label


def run_iopo_groups(
    paths: RunPaths, spec: StageSpec, engines: EngineProvider, progress: Progress | None
) -> StageResult:
    config = load_config(paths)
    version = version_for(paths, config, "refiner", spec.iteration)
    pairs_file = paths.data_file(spec.iteration, "pairs.jsonl")
    if not pairs_file.exists():
        raise FileNotFoundError(f"{pairs_file} is missing: it is written by the 'assemble' stage")
    pairs = [
        PairForGroup(str(p["tree"]), p["prompt"], p["chosen"], p["rejected"], p.get("rejected_judgment", ""))
        for p in read_jsonl(pairs_file)
    ]
    started = time.perf_counter()
    with metered(engines.engine_for("refiner", version), progress, "IOPO rewrites") as engine:
        judge = Judge.from_config(
            engine,
            config.judge,
            derive_seed(config.seed, "iopo-judge", spec.iteration),
            tie_retries=config.search.tie_retries,
        )
        result = build_groups(
            pairs,
            engine,
            judge,
            seed=derive_seed(config.seed, "iopo", spec.iteration),
            max_new_tokens=config.search.max_new_tokens,
            temperature=config.search.temperature,
            parse_retries=config.search.parse_retries,
        )
    write_jsonl_atomic(paths.shard(spec.iteration, "iopo_groups", spec.shard), result.groups)
    return StageResult(
        counts=dict(result.counts),
        engine=engine.stats.as_dict(),
        seconds=time.perf_counter() - started,
        models={"refiner": version_label(version)},
    )
