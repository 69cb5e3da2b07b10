"""Engine adapters behind ``shared.engine.Engine``: HF transformers (CPU/GPU) and vLLM (GPU).

Both are imported lazily so that importing ``workers`` never needs vLLM (it is not installable on
CPU machines) and never loads torch models until an engine is actually built.
"""

from __future__ import annotations

from pathlib import Path

from shared.config import ModelConfig
from shared.engine import Engine


def build_engine(model: ModelConfig, path: Path, seed: int = 0) -> Engine:
    """Load the engine a role's config asks for, on the model folder ``path``."""
    if model.engine == "hf":
        from .hf import HFEngine

        return HFEngine(path, model.hf)
    from .vllm import VLLMEngine

    return VLLMEngine(path, model.vllm, seed=seed)
