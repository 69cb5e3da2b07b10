"""``python -m workers.training.node``: one node of a multi-node train stage (a pod of the JobSet in
``deploy/overlays/gpu-multinode``).

Every node runs the train stage itself (``workers.stages.train``) for the run, iteration and stage in
its environment (``SPAR_RUN_DIR``, ``SPAR_ITERATION``, ``SPAR_STAGE``: ``train_actor`` or
``train_refiner``), with ``SPAR_NUM_MACHINES``, ``SPAR_MACHINE_RANK`` and node 0's address, which
make its ``accelerate launch`` join the others (:class:`workers.training.launch.Machines`). Node 0
publishes the version into the run directory on the shared volume; a JobSet restart after a lost
node resumes from the step checkpoint there, and a finished version is never trained again.
With ``SPAR_PROGRESS_FILE`` (set when the train worker created the JobSet) node 0 writes its step count
there for the waiting worker's progress. No Redis and no inference engine are involved: the pods need
the data volume and each other only.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from shared.runtime.artifacts import RunPaths
from shared.runtime.settings import apply_hf_environment
from shared.runtime.shards import StageSpec

STAGES = ("train_actor", "train_refiner")


class _NoEngines:
    """A node holds no inference engine; the train stage only asks it to release one."""

    def release(self) -> None:
        pass


def main(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    missing = [k for k in ("SPAR_RUN_DIR", "SPAR_ITERATION", "SPAR_STAGE") if not env.get(k)]
    if missing:
        print(f"workers.training.node: set {', '.join(missing)} (see the module docstring)", file=sys.stderr)
        return 2
    if env["SPAR_STAGE"] not in STAGES:
        print(f"SPAR_STAGE={env['SPAR_STAGE']!r}: one of {STAGES}", file=sys.stderr)
        return 2
    apply_hf_environment()
    from workers.stages.common import StageContext
    from workers.stages.train import run_train_actor, run_train_refiner

    runner = run_train_actor if env["SPAR_STAGE"] == "train_actor" else run_train_refiner
    spec = StageSpec(
        run_dir=env["SPAR_RUN_DIR"], iteration=int(env["SPAR_ITERATION"]), stage=env["SPAR_STAGE"], shard=0
    )
    progress: Callable[[str, int, int], None] | None = None
    if env.get("SPAR_PROGRESS_FILE"):  # set by a worker waiting for this JobSet (workers.training.jobset)
        from workers.training.jobset import write_progress

        target = Path(env["SPAR_PROGRESS_FILE"])
        progress = lambda label, done, total: write_progress(target, done, total)  # noqa: E731

    result = runner(StageContext.open(RunPaths(Path(env["SPAR_RUN_DIR"])), spec, _NoEngines(), progress))
    print(json.dumps({"counts": result.counts, "models": result.models}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
