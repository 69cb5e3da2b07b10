"""The ``Engine`` adapter over vLLM's in-process offline API (``vllm.LLM``).

vLLM pins its own torch and transformers builds, which conflict with the training stack (trl, peft,
the CPU torch). It is therefore an optional extra (``spar[vllm]``) installed only in the GPU
inference image, never on CPU development machines. This module must stay importable without it:
``vllm`` is imported inside ``VLLMEngine.__init__`` only, and a missing install raises
``VLLMNotInstalledError`` (an ``ImportError``) that says how to fix it.

One ``Engine.generate`` call becomes exactly one ``LLM.chat`` call with the whole batch, so vLLM's
scheduler sees every prompt at once (continuous batching plus prefix caching of the long shared
judge/refine prompts), and each request keeps its own ``SamplingParams``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.config import VLLMEngineConfig
from shared.engine import EngineStats, GenerationRequest

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM is not installed. It runs only in the GPU inference image: use that image, or on a CUDA "
    "machine run: pip install 'spar[vllm]' (vLLM pins its own torch/transformers, so do not "
    "install it into the CPU/training environment)."
)

# vLLM treats temperatures below this as greedy (vllm.sampling_params._SAMPLING_EPS) and then
# rejects n > 1 ("n must be 1 when using greedy sampling").
_GREEDY_EPS = 1e-5


class VLLMNotInstalledError(ImportError):
    """vLLM is missing; the message says where it is available and how to install it."""


def _import_vllm() -> tuple[Any, Any, Any]:
    """Import vLLM lazily so that the CPU image, which never has it, can import this module."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise VLLMNotInstalledError(INSTALL_HINT) from error
    return LLM, SamplingParams, LoRARequest


class VLLMEngine:
    """Serves one model (optionally with one LoRA adapter) through ``vllm.LLM.chat``.

    ``stats`` counts calls, requests, completions and the prompt/generated tokens vLLM reports,
    which ``MeteredEngine`` turns into per-stage token usage.
    """

    def __init__(self, model_path: str | Path, config: VLLMEngineConfig | None = None, seed: int = 0) -> None:
        self.config = config if config is not None else VLLMEngineConfig()
        self.model_path = str(model_path)
        self.seed = seed
        self.stats = EngineStats()
        llm_cls, self._sampling_params_cls, self._lora_request_cls = _import_vllm()
        # LoRA must be switched on when the engine starts (it reserves adapter slots in GPU memory),
        # so an engine built without an adapter cannot take one later.
        self.lora_enabled = bool(self.config.lora_adapter)
        kwargs: dict[str, Any] = {
            "model": self.model_path,
            "tensor_parallel_size": self.config.tensor_parallel_size,
            "gpu_memory_utilization": self.config.gpu_memory_utilization,
            "max_model_len": self.config.max_model_len,
            "dtype": self.config.dtype,
            "enable_prefix_caching": self.config.enable_prefix_caching,
            "trust_remote_code": self.config.trust_remote_code,
            "enforce_eager": self.config.enforce_eager,
            "seed": seed,
            "enable_lora": self.lora_enabled,
        }
        if self.lora_enabled:
            kwargs["max_lora_rank"] = self.config.max_lora_rank
            kwargs["max_loras"] = self.config.max_loras
        logger.info("starting vLLM for %s (tp=%d)", self.model_path, self.config.tensor_parallel_size)
        self.llm = llm_cls(**kwargs)
        # vLLM caches loaded adapters by their int id, so every switch takes a fresh id: an adapter
        # retrained in place (same path) is then reloaded instead of served from the stale cache.
        self._lora_ids = itertools.count(1)
        self.lora_request: Any | None = None
        if self.config.lora_adapter:
            self.switch_lora(self.config.lora_adapter)

    def close(self) -> None:
        """Shut vLLM's engine core down (its processes end) and drop the model. Idempotent.

        In a worker this engine runs inside a ``ProcessEngine`` child whose end is what guarantees
        the release on GPU; this is the orderly part of that shutdown.
        """
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm
        import gc

        gc.collect()

    def switch_lora(self, path: str | Path | None) -> None:
        """Serve later calls with the adapter at ``path`` (``None``: the base model), same engine."""
        if path is None:
            self.lora_request = None
            logger.info("vLLM engine now serves the base model")
            return
        if not self.lora_enabled:
            raise RuntimeError(
                "this vLLM engine was started without LoRA support; set vllm.lora_adapter in the "
                "model config so the engine is built with enable_lora=True"
            )
        lora_id = next(self._lora_ids)
        self.lora_request = self._lora_request_cls(
            lora_name=f"spar-lora-{lora_id}", lora_int_id=lora_id, lora_path=str(path)
        )
        logger.info("vLLM engine now serves LoRA adapter %s (id %d)", path, lora_id)

    def _sampling_params(self, request: GenerationRequest) -> Any:
        """One request's ``SamplingParams``; greedy requests ask vLLM for a single completion."""
        n = 1 if request.temperature < _GREEDY_EPS else request.n
        return self._sampling_params_cls(
            n=n,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=request.max_new_tokens,
            seed=request.seed,
            stop=list(request.stop) if request.stop else None,
        )

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        """Run the whole batch in one ``LLM.chat`` call; return each request's ``n`` texts in order.

        A greedy request (temperature 0) with ``n > 1`` is generated once and repeated: vLLM
        refuses ``n > 1`` when greedy, and greedy decoding would give ``n`` equal texts anyway.
        """
        requests = list(requests)
        if not requests:
            return []
        conversations = [[dict(message) for message in r.messages] for r in requests]
        params = [self._sampling_params(r) for r in requests]
        kwargs: dict[str, Any] = {"sampling_params": params, "use_tqdm": False}
        if self.lora_request is not None:
            kwargs["lora_request"] = self.lora_request
        outputs = list(self.llm.chat(conversations, **kwargs))
        if len(outputs) != len(requests):
            raise RuntimeError(
                f"vLLM returned {len(outputs)} outputs for a batch of {len(requests)} requests"
            )

        results: list[list[str]] = []
        prompt_tokens = generated_tokens = 0
        for i, (request, param, output) in enumerate(zip(requests, params, outputs, strict=True)):
            completions = sorted(output.outputs, key=lambda c: c.index)
            if len(completions) != param.n:
                raise RuntimeError(
                    f"vLLM returned {len(completions)} completions for request {i} (asked for n={param.n})"
                )
            texts = [c.text for c in completions]
            if param.n != request.n:  # greedy: one generation stands for all n
                texts = texts * request.n
            results.append(texts)
            prompt_tokens += len(output.prompt_token_ids or ())
            generated_tokens += sum(len(c.token_ids) for c in completions)

        self.stats.calls += 1
        self.stats.requests += len(requests)
        self.stats.completions += sum(r.n for r in requests)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.generated_tokens += generated_tokens
        return results
