"""``python -m workers.training.launch --role actor|refiner --job JOB.json``: one training job, one process.

This is the entry point ``accelerate launch`` starts on every GPU of a node (see :func:`accelerate_command`);
run plainly, it trains in one process (CPU or one GPU). The job file is JSON:

    {
      "model_path": "runs/x/models/actor-v0",   # starting checkpoint (and default reference)
      "data_file": "runs/x/iter1/pairs.jsonl",   # JSONL: pairs / IOPO groups (actor), {"messages"} (refiner)
      "config": {"objective": "dpo", ...},       # ActorTrainConfig or RefinerTrainConfig fields
      "out_dir": "runs/x/models/actor-v1",
      "ref_model_path": null,                    # actor only; default: model_path
      "seed": 0,
      "metrics_file": null                       # default: OUT_DIR/train_metrics.json
    }

The metrics dict returned by the trainer is written by the main process only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from shared.config import ActorTrainConfig, RefinerTrainConfig, TrainCommon

ROLES = ("actor", "refiner")


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
    model = ActorTrainConfig if role == "actor" else RefinerTrainConfig
    return model.model_validate(job.get("config") or {})


def run_job(role: str, job: dict[str, Any]) -> dict[str, Any]:
    """Train as the job says and return the trainer's metrics."""
    cfg = job_config(role, job)
    records = read_jsonl(Path(job["data_file"]))
    seed = int(job.get("seed", 0))
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
        )
    from workers.training.refiner import train_refiner

    return train_refiner(Path(job["model_path"]), records, cfg, Path(job["out_dir"]), seed=seed)  # type: ignore[arg-type]


def accelerate_command(role: str, job_path: Path, num_processes: int, cfg: TrainCommon) -> list[str]:
    """The ``accelerate launch`` argv that runs this job on ``num_processes`` GPUs of one node.

    DeepSpeed/FSDP settings travel in the training arguments (see ``actor.distributed_settings``); a YAML
    ``accelerate_config`` is handed to ``accelerate launch --config_file`` as well.
    """
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes)]
    if cfg.accelerate_config and cfg.accelerate_config.endswith((".yaml", ".yml")):
        argv += ["--config_file", cfg.accelerate_config]
    return argv + ["-m", "workers.training.launch", "--role", role, "--job", str(job_path)]


def main(argv: list[str] | None = None) -> int:
    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m workers.training.launch", description=summary)
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--job", type=Path, required=True, help="JSON job file (see the module docstring)")
    ns = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    job = load_job(ns.job)
    metrics = run_job(ns.role, job)
    if int(os.environ.get("RANK", "0")) == 0:
        target = Path(job.get("metrics_file") or Path(job["out_dir"]) / "train_metrics.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(json.dumps({k: v for k, v in metrics.items() if k != "loss_curve"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
