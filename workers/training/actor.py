"""Stage 5 (actor): :func:`train_actor`, preference optimisation of M_t into M_{t+1}.

The parts sit beside it, named by what they are (as TRL lays out a method): the data
(:mod:`.preference_data`), the config (:mod:`.preference_config`), the trainer and its loss
(:mod:`.preference_trainer`) and the arguments shared with the SFT trainer (:mod:`.arguments`).
Multi-GPU runs go through ``accelerate launch -m workers.training.launch --role actor --job JOB.json``:
every process runs :func:`train_actor`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from datasets import Dataset

from shared.config import ActorTrainConfig

from .arguments import (  # noqa: F401  (names callers and tests import from here)
    CHECKPOINTING,
    ZERO3_CONFIG,
    common_training_kwargs,
    distributed_settings,
    ensure_deepspeed_comm,
    lora_config,
    model_dtype,
)
from .outcome import common_metrics, save_outcome, step_logs, timed_train
from .preference_config import PreferenceConfig  # noqa: F401
from .preference_data import (  # noqa: F401
    GROUP_KEYS,
    PAIR_KEYS,
    SEQUENCES,
    SR_OBJECTIVES,
    PreferenceCollator,
    encode_record,
    num_trained,
    validate_records,
)
from .preference_trainer import (  # noqa: F401
    BatchLogps,
    PreferenceTrainer,
    preference_margins,
    score_records,
    sr_delta,
)
from .progress import StepHook, attach

logger = logging.getLogger(__name__)


def _history_metrics(trainer: Any) -> dict[str, Any]:
    """Start/end loss, margins and accuracies from the trainer's per-step logs."""
    steps = step_logs(trainer)
    first, last = (steps[0], steps[-1]) if steps else ({}, {})
    return {
        "first_loss": first.get("loss", math.nan),
        "last_loss": last.get("loss", math.nan),
        "margin_start": first.get("rewards/margins", math.nan),
        "margin_end": last.get("rewards/margins", math.nan),
        "accuracy_start": first.get("rewards/accuracies", math.nan),
        "accuracy_end": last.get("rewards/accuracies", math.nan),
    }


def _same_path(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def train_actor(
    model_path: Path,
    records: list[dict[str, Any]],
    cfg: ActorTrainConfig,
    out_dir: Path,
    ref_model_path: Path | None = None,
    seed: int = 0,
    on_step: StepHook | None = None,
    checkpoint_dir: Path | None = None,
) -> dict[str, Any]:
    """Train the actor on the iteration's pairs (or IOPO groups) and save it into ``out_dir``.

    The reference is ``ref_model_path`` or ``model_path`` (the iteration's starting checkpoint), frozen;
    with LoRA and no separate reference it is the adapter-disabled model, so no second copy is loaded.
    Full fine-tuning saves the whole model; LoRA saves the adapter and records its base in
    ``spar_train.json``. Returns the loss curve, start/end margins and accuracies, wall seconds, peak RSS.
    Weights (policy and reference alike) load in :func:`model_dtype`; with ``checkpoint_dir``, step
    checkpoints are saved there and a retried job resumes from the last one.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path, out_dir = Path(model_path), Path(out_dir)
    records = validate_records(records, cfg.objective)
    strategy, kwargs = common_training_kwargs(cfg, out_dir, seed, checkpoint_dir)
    # Built before the models are loaded: DeepSpeed ZeRO-3 must see its config at load time to partition.
    args = PreferenceConfig(
        objective=cfg.objective,
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        sft_weight=cfg.sft_weight,
        lam=cfg.lam,
        sr_prompt=cfg.sr_prompt,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
        **kwargs,
    )
    ensure_deepspeed_comm(strategy)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    dtype = model_dtype(cfg)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    ref_model = None
    if ref_model_path is not None and not _same_path(ref_model_path, model_path):
        ref_model = AutoModelForCausalLM.from_pretrained(ref_model_path, dtype=dtype)
    # Otherwise TRL supplies the reference: a frozen copy loaded from model_path in the policy's dtype (full
    # fine-tuning; under ZeRO-3 wrapped by trl's prepare_deepspeed as an inference engine), the
    # adapter-disabled model (LoRA), or nothing when every reference value is precomputed first.
    trainer = PreferenceTrainer(
        model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora) if cfg.lora else None,
    )
    attach(trainer, "actor", on_step)
    result, train_seconds = timed_train(trainer, checkpoint_dir, cfg.save_minutes)
    trainer.save_model(str(out_dir))
    metrics: dict[str, Any] = {
        "role": "actor",
        "objective": cfg.objective,
        "examples": len(records) - trainer.dropped_examples,
        "dropped_examples": trainer.dropped_examples,
        **common_metrics(trainer, result, train_seconds, cfg, strategy, model_path),
        **_history_metrics(trainer),
        "reference": str(ref_model_path or model_path),
    }
    save_outcome(trainer, tokenizer, out_dir, metrics)
    return metrics
