"""The functions RQ workers execute. Arguments and results are JSON; the work is the stage runners'.

A worker process keeps its loaded engine in :data:`ENGINES` across jobs (RQ's ``SimpleWorker``
runs jobs in-process), so a GPU model is loaded once and replaced only when a job names another
model version; at most one engine is resident (see ``workers.engines.slot``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shared.errors import InjectedFault  # noqa: F401  (also importable from here)
from shared.runtime.artifacts import RunPaths
from shared.runtime.confinement import check_config_paths
from shared.runtime.settings import settings
from shared.runtime.shards import StageSpec, load_config
from shared.runtime.versions import latest_version, version_for

from .engines.slot import EngineSlot
from .gpus import check_gpu_counts
from .stages import run_stage

log = logging.getLogger("spar.jobs")


class WorkerEngines(EngineSlot):
    """The engine of one worker process: at most one resident, closed before the next one loads.

    See :class:`workers.engines.slot.EngineSlot`: a version swap or a switch to the other role's
    model ends the old engine (for vLLM its whole host process) before building the new one, and the
    train stage's ``release()`` closes it for real. ``published()`` is what the worker advertises.
    """

    def published(self) -> dict[str, str]:
        return {
            "models": ", ".join(f"{r}: {v}" for r, v in self.current.items()),
            "engine_pids": ",".join(str(pid) for pid in self.host_pids()),
        }


ENGINES = WorkerEngines()


def _runs_root() -> Path:
    return settings().runs_root


def _confined(run_dir: str) -> RunPaths:
    """The run directory of a job, refused when it lies outside the configured runs root."""
    path = Path(run_dir).resolve()
    root = _runs_root()
    if not path.is_relative_to(root):
        raise PermissionError(f"run directory {path} is outside the runs root {root}")
    return RunPaths(path)


def run_shard(spec: dict) -> dict:
    """Execute one shard of one stage (idempotent: a finished shard returns its recorded result)."""
    parsed = StageSpec.model_validate(spec)
    paths = _confined(parsed.run_dir)
    _injected_fault(parsed)
    config = load_config(paths)
    check_config_paths(config, settings().data_root)  # paths re-checked where they are read
    check_gpu_counts(config, parsed.stage)  # refused in one line before any model loads
    ENGINES.config = config
    result = run_stage(paths, parsed, ENGINES, config=config)
    _wake_scheduler()
    return {
        "counts": result.counts,
        "seconds": result.seconds,
        "skipped": result.skipped,
        "models": result.models,
    }


def _wake_scheduler() -> None:
    """Tell the scheduler a shard is done (best effort: its periodic tick is the fallback)."""
    from rq import get_current_job

    from shared.runtime.queue import WAKE_CHANNEL

    job = get_current_job()
    if job is None:
        return
    try:
        job.connection.publish(WAKE_CHANNEL, job.id)
    except Exception as exc:  # Redis briefly away: the next tick finds the shard anyway
        log.warning("scheduler wake-up failed", extra={"event": "job.wake_failed", "error": str(exc)})


def _injected_fault(spec: StageSpec) -> None:
    """Fail the shards named in ``SPAR_FAIL_SHARDS`` ("stage:shard,..."), to drill failure handling."""
    wanted = {item.strip() for item in settings().fail_shards.split(",") if item.strip()}
    if f"{spec.stage}:{spec.shard}" in wanted:
        raise InjectedFault(f"injected failure of {spec.stage} shard {spec.shard} (SPAR_FAIL_SHARDS)")


def refine_one(
    run_dir: str,
    prompt: str,
    response: str,
    iteration: int | None = None,
    metadata: dict[str, Any] | None = None,
) -> dict:
    """Inference-time refinement of one (prompt, response) with the run's latest refiner.

    The same tree search as stage 3, judged by the run's ``judge.backend`` (the judge the stages
    use, from :func:`shared.judges.build_judge`): judge the response; if it fails, search until the
    judge accepts a refinement or the budget ends. ``metadata`` is the prompt's IFEval-style
    constraints (``instruction_id_list`` and ``kwargs``), what the verifier checks: required by a
    ``verifier`` run (checked before any model loads; ``POST /v1/refine`` answers 422 first), used
    where given by ``verifier_then_llm`` (the refiner judges otherwise), ignored by ``llm``.
    Returns the final response and how it was reached.
    """
    from shared.judges import backend_of, build_judge
    from shared.search import SearchRoot, search_trees
    from shared.verdict import Verdict

    paths = _confined(run_dir)
    config = load_config(paths)
    check_config_paths(config, settings().data_root)
    problem = backend_of(config.judge).missing_metadata(metadata)
    if problem is not None:
        raise ValueError(problem)
    ENGINES.config = config
    if iteration is None:
        iteration = latest_version(paths, "refiner")
    version = version_for(paths, config, "refiner", iteration)
    engine = ENGINES.engine_for("refiner", version)
    j, s = config.judge, config.search
    judge = build_judge(
        j, engine, seed=config.seed, tie_retries=s.tie_retries, metadata_by_prompt={prompt: metadata}
    )
    (first,) = judge.judge([(prompt, response)])
    out = {
        "refiner_version": version.version,
        "judge_backend": j.backend,
        "initial_label": None if first.label is None else int(first.label),
    }
    if first.label is not Verdict.FAIL:
        return out | {"response": response, "refined": False, "expansions": 0}
    (tree,) = search_trees(
        [SearchRoot("request", prompt, response, first.kept or "")], engine, judge, s, seed=config.seed
    )
    best = tree.success
    return out | {
        "response": best.response if best else response,
        "refined": best is not None,
        "value": best.value if best else None,
        "expansions": tree.expansions,
        "status": tree.status,
    }


def refused(reason: str = "", *args: object, **kwargs: object) -> dict:
    """What a worker runs instead of a job it refuses (``shared.runtime.rq_compat.refusal_reasons``).

    Raising makes RQ record the job as failed, with ``reason`` in its result, through its usual
    failure path; nothing of the refused job has run.
    """
    raise PermissionError(reason or "this worker only runs spar's job functions")


def noop(payload: dict | None = None) -> dict:
    """A job that does nothing: measures queue overhead in the benchmarks."""
    return {"ok": True}
