"""What a training run leaves behind, the same for both roles: the checkpoint, its tokenizer, and
``spar_train.json`` with the metrics every run reports (steps, loss, wall time, peak memory, how
it was distributed), to which each trainer adds its own (margins for the actor, target NLL for the
refiner). One place, so the summary, the API and the dashboard can rely on the common fields.

Step checkpoints live in a folder that outlives the training process (``checkpoint_dir``, chosen by the
train stage): a job killed mid-way and retried resumes from the last COMPLETE checkpoint there.
transformers writes a checkpoint in place and its ``trainer_state.json`` last, so a checkpoint without
that file was cut off by the kill and is never resumed from.
"""

from __future__ import annotations

import json
import re
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from shared.config import TrainCommon

MARKER_FILE = "spar_train.json"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def step_logs(trainer: Any) -> list[dict[str, Any]]:
    """The trainer's per-step log entries (the final summary entry has ``train_loss`` instead)."""
    return [h for h in trainer.state.log_history if "loss" in h and "train_loss" not in h]


CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARK = "trainer_state.json"  # written last by transformers' _save_checkpoint


def checkpoints(checkpoint_dir: Path | None) -> list[tuple[int, Path, bool]]:
    """(step, folder, complete) of every ``checkpoint-N`` folder, oldest step first."""
    if checkpoint_dir is None or not Path(checkpoint_dir).is_dir():
        return []
    found = []
    for child in Path(checkpoint_dir).iterdir():
        match = CHECKPOINT.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child, (child / COMPLETE_MARK).is_file()))
    return sorted(found)


def prune_incomplete(checkpoint_dir: Path | None) -> list[Path]:
    """Remove checkpoints a kill cut off mid-save (one process only: the train stage, before launching)."""
    removed = [folder for _, folder, complete in checkpoints(checkpoint_dir) if not complete]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def resume_point(checkpoint_dir: Path | None) -> Path | None:
    """The last complete checkpoint to resume from, or None to start at step 0."""
    complete = [folder for _, folder, ok in checkpoints(checkpoint_dir) if ok]
    return complete[-1] if complete else None


def checkpoint_settings(checkpoint_dir: Path | None, save_steps: int | None) -> dict[str, Any]:
    """TrainingArguments that save step checkpoints into ``checkpoint_dir`` (or none at all).

    Two are kept, so the previous complete checkpoint survives while the next one is being written.
    """
    if checkpoint_dir is None or not save_steps:
        return {"save_strategy": "no"}
    return {
        "output_dir": str(checkpoint_dir),
        "save_strategy": "steps",
        "save_steps": save_steps,
        "save_total_limit": 2,
    }


def add_timed_checkpoints(trainer: Any, save_minutes: float | None, checkpoint_dir: Path | None) -> bool:
    """Checkpoint ``trainer`` every ``save_minutes`` as well as every ``save_steps``, where it
    checkpoints at all (a folder and ``save_steps``) and runs as one process; whether it was added."""
    args = trainer.args
    saves = (
        checkpoint_dir is not None and str(getattr(args.save_strategy, "value", args.save_strategy)) != "no"
    )
    if not save_minutes or not saves or int(args.world_size) != 1:
        return False
    from .timed_checkpoints import TimedCheckpoints

    trainer.add_callback(TimedCheckpoints(save_minutes * 60.0))
    return True


def timed_train(
    trainer: Any, checkpoint_dir: Path | None = None, save_minutes: float | None = None
) -> tuple[Any, float]:
    """``trainer.train()`` (resumed from the last complete checkpoint in ``checkpoint_dir``) and its seconds.

    The step the run resumed from is kept on the trainer as ``spar_resumed_from_step`` for the metrics.
    With ``save_minutes`` it also checkpoints by the clock (``add_timed_checkpoints``).
    """
    add_timed_checkpoints(trainer, save_minutes, checkpoint_dir)
    start = resume_point(checkpoint_dir)
    trainer.spar_resumed_from_step = int(CHECKPOINT.match(start.name).group(1)) if start else 0  # type: ignore[union-attr]
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(start) if start else None)
    return result, time.perf_counter() - started


def peak_accelerator_mb() -> float | None:
    """Peak GPU memory allocated by this process's tensors, in MiB (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def common_metrics(
    trainer: Any, result: Any, train_seconds: float, cfg: TrainCommon, strategy: str, model_path: Path
) -> dict[str, Any]:
    """The fields every training run reports."""
    from .arguments import resolve_precision  # arguments imports this module

    logs = step_logs(trainer)
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        # After a resume the history restored from the checkpoint comes first: the curve is the whole run's.
        "loss_curve": [float(h["loss"]) for h in logs],
        "loss_steps": [int(h["step"]) for h in logs],
        "resumed_from_step": int(getattr(trainer, "spar_resumed_from_step", 0)),
        "train_seconds": round(train_seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "peak_accelerator_mb": peak_accelerator_mb(),
        "dtype": str(getattr(model, "dtype", "")).replace("torch.", ""),
        # what bf16: auto resolved to on this machine (float32 / bf16_mixed / bfloat16)
        "precision": resolve_precision(cfg),
        "world_size": int(trainer.args.world_size),
        "distributed": strategy,
        "lora": cfg.lora is not None,
        "base_model": str(model_path) if cfg.lora else None,
    }


def save_outcome(trainer: Any, tokenizer: Any, out_dir: Path, metrics: dict[str, Any]) -> None:
    """Write the tokenizer and the metrics next to the checkpoint (rank 0 only)."""
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir))
        (out_dir / MARKER_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
