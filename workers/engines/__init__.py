"""Engine adapters behind ``shared.engine.Engine``: HF transformers (CPU/GPU) and vLLM (GPU).

Both are imported lazily so that importing ``workers`` never needs vLLM (it is not installable on
CPU machines) and never loads torch models until an engine is actually built.
"""

from __future__ import annotations

from shared.config import ModelConfig
from shared.engine import Engine

from ..versions import ModelVersion


def build_engine(model: ModelConfig, version: ModelVersion, seed: int = 0) -> Engine:
    """Load the engine a role's config asks for, on the given model version.

    A LoRA version is served as base + adapter: vLLM applies the adapter per request
    (``LoRARequest``); the HF engine merges it into the base weights once at load time.
    """
    if model.engine == "hf":
        from .hf import HFEngine

        if version.adapter is None:
            return HFEngine(version.folder(), model.hf)
        return _hf_with_adapter(model, version)
    from .vllm import VLLMEngine

    settings = model.vllm
    if version.adapter is not None:
        settings = settings.model_copy(update={"lora_adapter": version.adapter})
    return VLLMEngine(version.folder(), settings, seed=seed)


def _hf_with_adapter(model: ModelConfig, version: ModelVersion) -> Engine:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf import _DTYPES, HFEngine

    cfg = model.hf
    base = AutoModelForCausalLM.from_pretrained(
        version.folder(), dtype=_DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, version.adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(version.folder(), trust_remote_code=cfg.trust_remote_code)
    return HFEngine.from_pretrained_objects(merged, tokenizer, cfg)
