"""An engine over a model folder or a built-in name, outside a run: ``spar eval`` and the benches.

A run's stages load engines through :func:`workers.engines.build_engine` (a role's model config and
version); evaluating a model folder on its own has neither, only a path and the engine's settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..models.registry import resolve_model

if TYPE_CHECKING:
    from shared.config import HFEngineConfig, VLLMEngineConfig
    from shared.engine import Engine


def build_engine(
    path: str | Path,
    engine: Literal["hf", "vllm"],
    hf: HFEngineConfig | None = None,
    vllm: VLLMEngineConfig | None = None,
    seed: int = 0,
) -> Engine:
    """The engine ``engine`` names over the model folder ``path``, with its settings.

    The settings are the run config's ``HFEngineConfig`` / ``VLLMEngineConfig`` (or the CLI flags
    turned into them), whose defaults suit the device. A start that cannot succeed raises
    ``shared.engine.EngineStartError`` naming the setting to change.
    """
    if engine == "hf":
        from workers.engines.hf import HFEngine

        return HFEngine(path, hf)
    if engine == "vllm":
        from workers.engines.vllm import VLLMEngine

        return VLLMEngine(path, vllm, seed=seed)
    raise ValueError(f"unknown engine {engine!r}: use 'hf' or 'vllm'")


def build_eval_engine(
    model: str | Path,
    engine: Literal["hf", "vllm"] = "hf",
    hf: HFEngineConfig | None = None,
    vllm: VLLMEngineConfig | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Engine:
    """Load ``model`` (a Hugging Face folder or a built-in name such as ``smollm2``) for evaluation.

    ``hf.batch_size`` is the HF engine's rows per forward pass (vLLM schedules the whole request
    list itself).
    """
    return build_engine(resolve_model(str(model), cache_dir), engine, hf=hf, vllm=vllm, seed=seed)
