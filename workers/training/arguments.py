"""Training arguments both trainers share: precision, LoRA, checkpoints, DeepSpeed ZeRO-3 / FSDP.

The preference trainer (actor) and the SFT trainer (refiner) build their TRL configs from these, so a
setting of ``TrainCommon`` (shared/config.py) means the same for both.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch
from trl import DPOConfig

from shared.config import LoraSettings, TrainCommon
from shared.runtime.tracking import trainer_tracking

from .outcome import checkpoint_settings
from .precision import Precision, model_dtype, resolve_precision  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)


# transformers 5.19 (the version vLLM's CPU build accepts) names it gradient_checkpointing; later 5.x
# releases renamed it activation_checkpointing. Whichever the installed TrainingArguments has.
CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in DPOConfig.__dataclass_fields__
    else "gradient_checkpointing"
)

ZERO3_CONFIG: dict[str, Any] = {
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_gather_16bit_weights_on_model_save": True,
    },
    "bf16": {"enabled": "auto"},
    "fp16": {"enabled": "auto"},
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
}


def distributed_settings(cfg: TrainCommon, cuda_available: bool | None = None) -> tuple[str, dict[str, Any]]:
    """(strategy actually used, extra TrainingArguments) for ``cfg.distributed``.

    ``deepspeed_zero3`` is the reference recipe's (ZeRO-3, weights gathered in 16 bit on save); a ``.json``
    ``accelerate_config`` replaces the built-in DeepSpeed/FSDP settings. Both also run without CUDA
    (DeepSpeed's CPU accelerator, FSDP over gloo), which is how the suite tests them; ``cuda_available``
    is kept for callers that ask what a GPU node would get.
    """
    if cfg.distributed == "none":
        return "none", {}
    if cfg.distributed == "deepspeed_zero3" and importlib.util.find_spec("deepspeed") is None:
        raise ValueError(
            "train.distributed=deepspeed_zero3 needs DeepSpeed: install the training extra "
            "(DS_BUILD_OPS=0 pip install --no-build-isolation -c constraints.txt -e '.[train]'), "
            "or set distributed: none"
        )
    custom = (
        cfg.accelerate_config if cfg.accelerate_config and cfg.accelerate_config.endswith(".json") else None
    )
    if cfg.distributed == "deepspeed_zero3":
        return "deepspeed_zero3", {"deepspeed": custom or json.loads(json.dumps(ZERO3_CONFIG))}
    fsdp_config = custom or {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "state_dict_type": "FULL_STATE_DICT",
        "reshard_after_forward": True,
        # FSDP prefers its own activation checkpointing to the trainer's (no redundant all-gather).
        "activation_checkpointing": cfg.gradient_checkpointing,
    }
    return "fsdp", {"fsdp": True, "fsdp_config": fsdp_config, CHECKPOINTING: False}


def ensure_deepspeed_comm(strategy: str) -> None:
    """Join DeepSpeed's communication layer to the process group before ZeRO-3 partitions a model.

    On GPU the training arguments' accelerate state does it; with ``use_cpu`` it does not, and
    ``zero.Init`` then sees one process and rejects the batch sizes. Call after the training arguments
    are built (they create the gloo/nccl group) and before any model is loaded.
    """
    if strategy != "deepspeed_zero3" or torch.cuda.is_available():
        return
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo")


def lora_config(settings: LoraSettings) -> Any:
    """The peft ``LoraConfig`` for a causal LM from the run's LoRA settings."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )


def common_training_kwargs(
    cfg: TrainCommon, out_dir: Path, seed: int, checkpoint_dir: Path | None = None
) -> tuple[str, dict[str, Any]]:
    """TrainingArguments of both trainers: schedule, batch, precision, per-step logs, step checkpoints.

    Checkpoints go to ``checkpoint_dir`` every ``cfg.save_steps`` steps (none without a folder): the
    trainer's output folder is the checkpoint folder, the final model is saved explicitly into ``out_dir``.
    """
    cuda = torch.cuda.is_available()
    strategy, dist = distributed_settings(cfg, cuda)
    kwargs: dict[str, Any] = {
        "output_dir": str(out_dir),
        "learning_rate": cfg.learning_rate,  # type: ignore[attr-defined]
        "lr_scheduler_type": cfg.lr_scheduler,  # type: ignore[attr-defined]
        # transformers 5 has no warmup_ratio: a float in [0, 1) given as warmup_steps is a ratio.
        "warmup_steps": float(cfg.warmup_ratio),
        "weight_decay": cfg.weight_decay,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps or -1,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "max_length": cfg.max_length,
        # TRL defaults it to True: honour the setting either way.
        CHECKPOINTING: cfg.gradient_checkpointing,
        # TRL's default is bf16=True: set it from the resolved precision either way. On CPU the trainer's
        # accelerator then runs every forward (policy and reference alike) under bfloat16 autocast.
        "bf16": resolve_precision(cfg, cuda) != "float32",
        "use_cpu": not cuda,
        "logging_steps": 1,
        "disable_tqdm": True,
        "seed": seed,
        "data_seed": seed,
        "dataloader_num_workers": 0,
    }
    kwargs |= checkpoint_settings(checkpoint_dir, cfg.save_steps)
    kwargs |= trainer_tracking(cfg, checkpoint_dir)  # report_to (default none) and the run name
    kwargs |= dist
    return strategy, kwargs
