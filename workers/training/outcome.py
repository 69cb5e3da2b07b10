"""What a training run leaves behind, the same for both roles: the checkpoint, its tokenizer, and
``spar_train.json`` with the metrics every run reports (steps, loss, wall time, peak memory, how
it was distributed), to which each trainer adds its own (margins for the actor, target NLL for the
refiner). One place, so the summary, the API and the dashboard can rely on the common fields.
"""

from __future__ import annotations

import json
import resource
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


def timed_train(trainer: Any) -> tuple[Any, float]:
    """``trainer.train()`` and its wall seconds."""
    started = time.perf_counter()
    result = trainer.train()
    return result, time.perf_counter() - started


def common_metrics(
    trainer: Any, result: Any, train_seconds: float, cfg: TrainCommon, strategy: str, model_path: Path
) -> dict[str, Any]:
    """The fields every training run reports."""
    return {
        "steps": int(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "loss_curve": [float(h["loss"]) for h in step_logs(trainer)],
        "train_seconds": round(train_seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "distributed": strategy,
        "lora": cfg.lora is not None,
        "base_model": str(model_path) if cfg.lora else None,
    }


def save_outcome(trainer: Any, tokenizer: Any, out_dir: Path, metrics: dict[str, Any]) -> None:
    """Write the tokenizer and the metrics next to the checkpoint (rank 0 only)."""
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(str(out_dir))
        (out_dir / MARKER_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
