"""Engine adapters behind ``shared.engine.Engine``: HF transformers and vLLM, each on CPU or GPU.

vLLM is the production engine: its CUDA build on GPU machines, its CPU build on development machines
and in CI; HF transformers serves tests and models vLLM cannot load. A vLLM engine is hosted in a
child process (``ProcessEngine``) so that closing it returns all its memory. Both are imported
lazily so that importing ``workers`` never needs vLLM (an optional install) and never loads torch
models until an engine is actually built.
"""

from __future__ import annotations

import gc
import logging

from shared.config import ModelConfig
from shared.engine import Engine
from shared.runtime.versions import ModelVersion

from ..models.registry import model_folder

log = logging.getLogger("spar.engines")


def close_engine(engine: object) -> None:
    """Free an engine's memory now: its own ``close()`` when it has one, then a garbage collection.

    Engines without ``close`` (scripted test engines) are simply dropped. A failing close is logged,
    not raised: the caller is about to load the next engine and must not be stopped by the old one.
    """
    close = getattr(engine, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            log.exception("closing an engine failed")
    gc.collect()


def build_engine(
    model: ModelConfig, version: ModelVersion, seed: int = 0, isolated: bool | None = None
) -> Engine:
    """Load the engine a role's config asks for, on the given model version.

    A LoRA version is served as base + adapter: vLLM applies the adapter per request
    (``LoRARequest``); the HF engine merges it into the base weights once at load time.

    ``isolated`` hosts the engine in a child process (``ProcessEngine``) whose end returns all of
    its memory. ``None`` chooses per engine: vLLM is always isolated (``del`` does not reliably free
    its GPU memory, and its engine-core processes must be ended); the HF engine runs in this
    process, where ``close()`` frees it (PyTorch's allocator gives the weights back) without the
    child's start-up cost. ``SPAR_ENGINE_ISOLATION=process|inline`` overrides the choice.
    """
    if isolated is None:
        from shared.runtime.settings import settings as spar_settings

        forced = spar_settings().engine_isolation  # validated: '', process or inline
        isolated = forced == "process" if forced else model.engine == "vllm"
    if isolated:
        from .process import ProcessEngine

        return ProcessEngine(model, version, seed=seed)
    if model.engine == "hf":
        from .hf import HFEngine

        if version.adapter is None:
            return HFEngine(model_folder(version), model.hf)
        return _hf_with_adapter(model, version)
    from .vllm import VLLMEngine

    settings = model.vllm
    if version.adapter is not None:
        settings = settings.model_copy(update={"lora_adapter": version.adapter})
    return VLLMEngine(model_folder(version), settings, seed=seed)


def _hf_with_adapter(model: ModelConfig, version: ModelVersion) -> Engine:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .hf import _DTYPES, HFEngine

    cfg = model.hf
    base = AutoModelForCausalLM.from_pretrained(
        model_folder(version), dtype=_DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code
    )
    merged = PeftModel.from_pretrained(base, version.adapter).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(model_folder(version), trust_remote_code=cfg.trust_remote_code)
    return HFEngine.from_pretrained_objects(merged, tokenizer, cfg)
