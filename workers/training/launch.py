"""``python -m workers.training.launch --role actor|refiner --job JOB.json``: one training job, one process.

This is the entry point ``accelerate launch`` starts on every GPU of a node (see :func:`accelerate_command`);
run plainly, it trains in one process (CPU or one GPU). The train stage starts it through
:func:`launch_job` when ``num_processes > 1`` or a ``distributed`` mode is set: the launcher runs in a child
process, its output is relayed to the worker's log, rank 0's step lines (``--progress``) reach the stage's
progress hook, and a non-zero exit fails the stage with the child's last lines. Rank 0 alone writes the
model and the metrics into the job's folders; the worker, not the children, publishes the version. The
job file is JSON:

    {
      "model_path": "runs/x/models/actor-v0",   # starting checkpoint (and default reference)
      "data_file": "runs/x/iter1/pairs.jsonl",   # JSONL: pairs / IOPO groups (actor), {"messages"} (refiner)
      "config": {"objective": "dpo", ...},       # ActorTrainConfig or SftConfig fields
      "out_dir": "runs/x/models/actor-v1",
      "ref_model_path": null,                    # actor only; default: model_path
      "seed": 0,
      "metrics_file": null,                      # default: OUT_DIR/train_metrics.json
      "checkpoint_dir": null                     # step checkpoints; resumes from the last one found there
    }

The metrics dict returned by the trainer is written by the main process only.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import ActorTrainConfig, SftConfig, TrainCommon
from shared.errors import TrainingLaunchError  # noqa: F401  (also importable from here)
from shared.runtime.settings import apply_hf_environment

ROLES = ("actor", "refiner")
PROGRESS_PREFIX = "SPAR_PROGRESS "
"""Rank 0's step lines on stdout: ``SPAR_PROGRESS {"done": d, "total": t}``."""
KEPT_LINES = 400
TAIL_LINES = 8
ERROR_LINE = re.compile(
    r"^(\[rank\d+\]:\s*)?"
    r"([\w.]*(Error|Exception|Interrupt)\b|Killed\b|terminate called|\s*what\(\):|Fatal Python error)"
)
"""A rank's own error line: a Python exception, or a native abort (C++ ``terminate called``, ``what():``)."""
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RENDEZVOUS_PORT = 29500
"""Node 0's rendezvous port in a multi-node job (the gpu-multinode overlay's Service and NetworkPolicy)."""

log = logging.getLogger("spar.train.launch")


@dataclass(frozen=True)
class Machines:
    """This node's place in a training job that spans several nodes (pods), from its environment.

    A multi-node train job (``deploy/overlays/gpu-multinode``: a JobSet) starts the same command on
    every node with ``SPAR_NUM_MACHINES``, ``SPAR_MACHINE_RANK`` (the pod's completion index) and the
    address of node 0 (``SPAR_MAIN_PROCESS_IP``, port ``SPAR_MAIN_PROCESS_PORT``, default 29500), where
    torchrun's rendezvous listens. ``num_processes`` counts the processes of ALL nodes (accelerate's
    convention), so each node starts ``num_processes / num_machines``.
    """

    num_machines: int
    machine_rank: int
    main_process_ip: str
    main_process_port: int = DEFAULT_RENDEZVOUS_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Machines | None:
        """The node's settings, or None on one machine (``SPAR_NUM_MACHINES`` unset or 1)."""
        env = os.environ if env is None else env
        count = int(env.get("SPAR_NUM_MACHINES", "1") or "1")
        if count <= 1:
            return None
        missing = [k for k in ("SPAR_MACHINE_RANK", "SPAR_MAIN_PROCESS_IP") if not env.get(k)]
        if missing:
            needed = " and ".join(missing)
            raise TrainingLaunchError(f"SPAR_NUM_MACHINES={count} needs {needed} set on every node")
        rank = int(env["SPAR_MACHINE_RANK"])
        if not 0 <= rank < count:
            raise TrainingLaunchError(
                f"SPAR_MACHINE_RANK={rank} is outside 0..{count - 1} (SPAR_NUM_MACHINES={count})"
            )
        port = int(env.get("SPAR_MAIN_PROCESS_PORT") or DEFAULT_RENDEZVOUS_PORT)
        return cls(count, rank, env["SPAR_MAIN_PROCESS_IP"], port)

    def processes_per_node(self, cfg: TrainCommon) -> int:
        """This node's share of ``num_processes``; refused unless every node gets the same number."""
        if cfg.num_processes % self.num_machines:
            raise TrainingLaunchError(
                f"num_processes={cfg.num_processes} does not divide over SPAR_NUM_MACHINES="
                f"{self.num_machines} nodes: set num_processes to nodes x GPUs per node"
            )
        return cfg.num_processes // self.num_machines

    def flags(self) -> list[str]:
        """``accelerate launch``'s multi-node flags (torchrun's static rendezvous on node 0)."""
        return [
            "--num_machines", str(self.num_machines),
            "--machine_rank", str(self.machine_rank),
            "--main_process_ip", self.main_process_ip,
            "--main_process_port", str(self.main_process_port),
        ]  # fmt: skip


def needs_launch(cfg: TrainCommon, machines: Machines | None = None) -> bool:
    """Whether a job runs through ``accelerate launch`` in a child process rather than in the worker."""
    return machines is not None or cfg.num_processes > 1 or cfg.distributed != "none"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file (blank lines skipped)."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_job(path: Path) -> dict[str, Any]:
    """The job file, with the fields every role needs checked."""
    job = json.loads(Path(path).read_text(encoding="utf-8"))
    missing = [k for k in ("model_path", "data_file", "out_dir") if not job.get(k)]
    if missing:
        raise ValueError(f"job file {path} lacks {missing}")
    return job


def job_config(role: str, job: dict[str, Any]) -> TrainCommon:
    """The validated training configuration of a job (unknown keys are rejected)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    model = ActorTrainConfig if role == "actor" else SftConfig
    return model.model_validate(job.get("config") or {})


def run_job(
    role: str, job: dict[str, Any], on_step: Callable[[int, int], None] | None = None
) -> dict[str, Any]:
    """Train as the job says and return the trainer's metrics."""
    cfg = job_config(role, job)
    records = read_jsonl(Path(job["data_file"]))
    seed = int(job.get("seed", 0))
    checkpoint_dir = Path(job["checkpoint_dir"]) if job.get("checkpoint_dir") else None
    if role == "actor":
        from workers.training.actor import train_actor

        ref = job.get("ref_model_path")
        return train_actor(
            Path(job["model_path"]),
            records,
            cfg,
            Path(job["out_dir"]),  # type: ignore[arg-type]
            ref_model_path=Path(ref) if ref else None,
            seed=seed,
            on_step=on_step,
            checkpoint_dir=checkpoint_dir,
        )
    from workers.training.refiner import train_refiner

    return train_refiner(
        Path(job["model_path"]),
        records,
        cfg,  # type: ignore[arg-type]
        Path(job["out_dir"]),
        seed=seed,
        on_step=on_step,
        checkpoint_dir=checkpoint_dir,
    )


def accelerate_command(
    role: str,
    job_path: Path,
    num_processes: int,
    cfg: TrainCommon,
    progress: bool = False,
    machines: Machines | None = None,
) -> list[str]:
    """The ``accelerate launch`` argv that runs this job on ``num_processes`` processes of one node.

    Without a YAML ``accelerate_config``, several processes go through torchrun (``--multi_gpu``) on a
    free port, so two jobs on one node never collide; on a machine without GPUs the same command runs DDP
    over gloo. One process (e.g. ZeRO-3 offload on one GPU) uses the plain launcher, and
    :func:`single_rank_env` gives it the rank variables DeepSpeed expects.
    DeepSpeed/FSDP settings travel in the training arguments (see ``actor.distributed_settings``); a YAML
    ``accelerate_config`` replaces these flags (``--config_file``), with ``num_processes`` still given here.
    With ``machines`` (several nodes) ``num_processes`` counts every node's processes and node 0's
    address replaces the free port: every node runs this command with its own ``--machine_rank``.
    """
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if cfg.accelerate_config and cfg.accelerate_config.endswith((".yaml", ".yml")):
        argv += ["--config_file", cfg.accelerate_config]
        argv += machines.flags() if machines is not None else []
    elif machines is not None:
        argv += ["--multi_gpu", *machines.flags(), "--mixed_precision", "no", "--dynamo_backend", "no"]
    else:
        argv += ["--multi_gpu", "--main_process_port", "0"] if num_processes > 1 else []
        argv += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # the trainer's
    argv += ["-m", "workers.training.launch", "--role", role, "--job", str(job_path)]
    return argv + (["--progress"] if progress else [])


def single_rank_env(num_processes: int) -> dict[str, str]:
    """RANK/WORLD_SIZE/MASTER_* for a one-process launch (torchrun sets them when there are several)."""
    if num_processes > 1:
        return {}
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def write_job(path: Path, job: dict[str, Any]) -> Path:
    """Write a job file (validated as :func:`load_job` reads it) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(job, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    load_job(path)
    return path


def _die_with_parent() -> None:
    """Receive SIGTERM when the parent process dies (even by SIGKILL), so no orphaned trainer keeps the
    GPUs while a retry starts (Linux; a no-op elsewhere). Kept across exec."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


# Sets the parent-death signal and keeps the worker's CPU priority (workers/priority.py), then becomes the
# launcher (no preexec_fn: unsafe in a threaded worker).
_EXEC_SHIM = (
    "import ctypes, os, signal, sys\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6').prctl(1, signal.SIGTERM)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(os.environ['SPAR_LAUNCH_PARENT']):\n"
    "    sys.exit('the worker that launched this training is gone')\n"
    "from workers.priority import keep_parent_priority\n"
    "keep_parent_priority()\n"
    "os.execv(sys.argv[1], sys.argv[1:])\n"
)


def launch_job(
    role: str,
    job: dict[str, Any],
    work_dir: Path,
    on_step: Callable[[int, int], None] | None = None,
    machines: Machines | None = None,
) -> dict[str, Any]:
    """Run ``job`` through ``accelerate launch`` in a child process and return rank 0's metrics.

    The job file and the metrics file live in ``work_dir`` (the job's checkpoint folder, which outlives
    the worker). Output lines are relayed to this process's log; progress lines go to ``on_step``.
    With ``machines``, this node's processes join the other nodes' (``work_dir`` is on the volume they
    share); only node 0 holds global rank 0, so only node 0 gets metrics: the other nodes get ``{}``.
    """
    cfg = job_config(role, job)
    work_dir.mkdir(parents=True, exist_ok=True)
    node = 0 if machines is None else machines.machine_rank
    metrics_file = work_dir / f"{role}_metrics.json"
    if node == 0:
        metrics_file.unlink(missing_ok=True)
    name = "job.json" if node == 0 else f"job-node{node}.json"  # the nodes share work_dir
    job_path = write_job(work_dir / name, job | {"metrics_file": str(metrics_file)})
    if machines is not None:
        machines.processes_per_node(cfg)  # refused here, not by torchrun, when it does not divide
    argv = accelerate_command(
        role, job_path, cfg.num_processes, cfg, progress=on_step is not None and node == 0, machines=machines
    )
    env = os.environ | {
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
        "SPAR_DIE_WITH_PARENT": "1",
        "SPAR_LAUNCH_PARENT": str(os.getpid()),
        **(single_rank_env(cfg.num_processes) if machines is None else {}),
    }
    log.info("launching training", extra={"event": "train.launch", "role": role, "argv": " ".join(argv)})
    last: collections.deque[str] = collections.deque(maxlen=KEPT_LINES)
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXEC_SHIM, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # one process group: ended together if this stage is interrupted
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if line.startswith(PROGRESS_PREFIX):
                step = json.loads(line[len(PROGRESS_PREFIX) :])
                if on_step is not None:
                    on_step(int(step["done"]), int(step["total"]))
                continue
            if line.strip():
                last.append(line)
                log.debug(line, extra={"event": "train.child", "role": role})
        rc = proc.wait()
    except BaseException:
        _end_group(proc)
        raise
    if rc != 0:
        where = "" if machines is None else f", node {node} of {machines.num_machines}"
        raise TrainingLaunchError(
            f"{role} training launched with `accelerate launch` (num_processes={cfg.num_processes}, "
            f"distributed={cfg.distributed}{where}) exited with code {rc}:\n{error_summary(list(last))}"
        )
    if node != 0:
        return {}
    if not metrics_file.exists():
        raise TrainingLaunchError(f"{role} training exited 0 but rank 0 wrote no metrics ({metrics_file})")
    return json.loads(metrics_file.read_text(encoding="utf-8"))


def error_summary(lines: list[str]) -> str:
    """The child's exception lines (each distinct one, first five) and its last lines.

    torchrun ends a failed run with its own summary table, which hides the ranks' actual errors: those
    are found by their ``SomethingError: ...`` lines.
    """
    errors = list(dict.fromkeys(line for line in lines if ERROR_LINE.match(line)))[:5]
    head = ["errors:", *errors] if errors else []
    return "\n".join(head + ["last lines:", *lines[-TAIL_LINES:]])


def _end_group(proc: subprocess.Popen) -> None:
    """SIGTERM the launched process group (torchrun passes it to the ranks), SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m workers.training.launch", description=summary)
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--job", type=Path, required=True, help="JSON job file (see the module docstring)")
    parser.add_argument(
        "--progress", action="store_true", help=f"rank 0 prints '{PROGRESS_PREFIX}{{json}}' after each step"
    )
    ns = parser.parse_args(argv)
    apply_hf_environment()
    if os.environ.get("SPAR_DIE_WITH_PARENT") == "1":
        _die_with_parent()
    rank0 = int(os.environ.get("RANK", "0")) == 0
    job = load_job(ns.job)

    def progress(done: int, total: int) -> None:
        print(PROGRESS_PREFIX + json.dumps({"done": done, "total": total}), flush=True)

    metrics = run_job(ns.role, job, on_step=progress if ns.progress and rank0 else None)
    if rank0:
        target = Path(job.get("metrics_file") or Path(job["out_dir"]) / "train_metrics.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({k: v for k, v in metrics.items() if k != "loss_curve"}))
    _close_process_group()
    return 0


def _close_process_group() -> None:
    """Wait for every rank, then take the process group down before the interpreter exits.

    A rank that exits with gloo's threads still alive can abort (SIGABRT, ``terminate called``) after
    its training finished, and torchrun then fails the whole job. The barrier also keeps the other
    ranks alive until rank 0 has written the metrics file.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
