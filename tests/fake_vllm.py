"""A small stand-in for the ``vllm`` package, so the vLLM adapter is tested on machines without GPUs.

vLLM cannot be installed on the CPU machines, yet the adapter must translate requests exactly. This
fake mirrors the parts of vLLM's public API the adapter uses, with the real signatures and the
validation that would make a wrong call fail on a GPU (checked against vLLM's sources:
``vllm/entrypoints/llm.py``, ``vllm/sampling_params.py``, ``vllm/lora/request.py``,
``vllm/outputs.py``):

- ``LLM(model, *, ..., **kwargs)``: keyword settings; unknown ones are rejected here (the real one
  forwards them to ``EngineArgs``, which rejects unknown fields).
- ``LLM.chat(messages, sampling_params=None, use_tqdm=True, lora_request=None, ...)``: one
  conversation or a list of them; a list of ``SamplingParams`` must match the number of prompts.
- ``SamplingParams``: ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``, ``stop``, with
  vLLM's range checks and its "n must be 1 when using greedy sampling" rule.
- ``LoRARequest(lora_name, lora_int_id, lora_path)``: id >= 1 and a non-empty path.
- ``RequestOutput.prompt_token_ids`` / ``.outputs``; ``CompletionOutput.index/.text/.token_ids``.

``install_fake_vllm(monkeypatch)`` puts the modules in ``sys.modules`` and returns a ``FakeVLLM``
that records every ``LLM`` built and every ``chat`` call.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
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
        "swap_space",
        "enforce_eager",
        "max_model_len",
        "enable_prefix_caching",
        "enable_lora",
        "max_lora_rank",
        "max_loras",
        "max_num_seqs",
    }
)
_SAMPLING_EPS = 1e-5


class SamplingParams:
    """The fields of ``vllm.SamplingParams`` the adapter sets, with vLLM's own checks."""

    def __init__(
        self,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: str | list[str] | None = None,
        max_tokens: int | None = 16,
    ) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be at least 1, got {n}.")
        if not 0.0 <= temperature <= 2.0:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}.")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
        stop_list = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        if any(not s for s in stop_list):
            raise ValueError("stop cannot contain an empty string.")
        if temperature < _SAMPLING_EPS and n > 1:
            raise ValueError(f"n must be 1 when using greedy sampling, got {n}.")
        self.n = n
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.seed = seed
        self.stop = stop_list
        self.max_tokens = max_tokens

    def __repr__(self) -> str:
        return f"SamplingParams({vars(self)})"


@dataclass
class LoRARequest:
    """``vllm.lora.request.LoRARequest``: a named adapter with a unique int id."""

    lora_name: str
    lora_int_id: int
    lora_path: str = ""

    def __post_init__(self) -> None:
        if self.lora_int_id < 1:
            raise ValueError(f"id must be > 0, got {self.lora_int_id}")
        if not self.lora_path:
            raise ValueError("lora_path cannot be empty")


@dataclass
class CompletionOutput:
    """``vllm.outputs.CompletionOutput`` (the fields the adapter reads, plus finish_reason)."""

    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = "stop"


@dataclass
class RequestOutput:
    """``vllm.outputs.RequestOutput``: one prompt's token ids and its ``n`` completions."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: Any
    outputs: list[CompletionOutput]
    finished: bool = True


@dataclass
class ChatCall:
    """What one ``LLM.chat`` call received."""

    messages: list[list[dict[str, str]]]
    sampling_params: Any
    use_tqdm: bool
    lora_request: LoRARequest | None


def default_responder(conversation: list[dict[str, str]], params: SamplingParams, index: int) -> str:
    """Deterministic text naming the last user turn and the completion index."""
    return f"{conversation[-1]['content']}#{index}"


@dataclass
class FakeVLLM:
    """Records what the adapter did to the fake; tests can script replies and tamper with outputs."""

    llms: list[FakeLLM] = field(default_factory=list)
    responder: Callable[[list[dict[str, str]], SamplingParams, int], str] = default_responder
    # Applied to the outputs of each chat call before they are returned (to simulate bad replies).
    tamper: Callable[[list[RequestOutput]], list[RequestOutput]] | None = None

    @property
    def llm(self) -> FakeLLM:
        assert len(self.llms) == 1, f"expected one LLM, got {len(self.llms)}"
        return self.llms[0]


class FakeLLM:
    """``vllm.LLM`` with the same constructor and ``chat`` signatures; generates scripted text."""

    state: FakeVLLM  # set on the per-install subclass

    def __init__(self, model: str, **kwargs: Any) -> None:
        unknown = set(kwargs) - KNOWN_LLM_KWARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got unexpected keyword arguments {sorted(unknown)}")
        if not isinstance(model, str):
            raise TypeError(f"model must be a str, got {type(model).__name__}")
        self.model = model
        self.kwargs = kwargs
        self.calls: list[ChatCall] = []
        self._request_counter = 0
        self.state.llms.append(self)

    def chat(
        self,
        messages: list[dict[str, str]] | list[list[dict[str, str]]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | None = None,
        chat_template: str | None = None,
        chat_template_content_format: str = "auto",
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        tools: list[dict[str, Any]] | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
        mm_processor_kwargs: dict[str, Any] | None = None,
    ) -> list[RequestOutput]:
        conversations: list[list[dict[str, str]]]
        if messages and all(isinstance(m, list) for m in messages):
            conversations = messages  # type: ignore[assignment]
        else:
            conversations = [messages]  # type: ignore[list-item]
        if sampling_params is None:
            params = [SamplingParams() for _ in conversations]
        elif isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(conversations)
        else:
            params = list(sampling_params)
            if len(params) != len(conversations):
                raise ValueError("The lengths of prompts and sampling_params must be the same.")
        if lora_request is not None:
            if not isinstance(lora_request, LoRARequest):
                raise TypeError(f"lora_request must be a LoRARequest, got {type(lora_request)}")
            if not self.kwargs.get("enable_lora"):
                raise ValueError(f"LoRA is not enabled! Unable to serve {lora_request.lora_name}.")
        self.calls.append(ChatCall(conversations, sampling_params, use_tqdm, lora_request))

        outputs: list[RequestOutput] = []
        for conversation, param in zip(conversations, params, strict=True):
            prompt = "".join(f"<{m['role']}>{m['content']}" for m in conversation)
            completions = []
            for index in range(param.n):
                text = self.state.responder(conversation, param, index)
                completions.append(CompletionOutput(index, text, list(range(len(text.split())))))
            outputs.append(
                RequestOutput(
                    request_id=str(self._request_counter),
                    prompt=None,
                    prompt_token_ids=list(range(len(prompt.split()) + 3)),
                    prompt_logprobs=None,
                    outputs=completions,
                )
            )
            self._request_counter += 1
        if self.state.tamper is not None:
            outputs = self.state.tamper(outputs)
        return outputs


def install_fake_vllm(monkeypatch: pytest.MonkeyPatch) -> FakeVLLM:
    """Put fake ``vllm``, ``vllm.lora``, ``vllm.lora.request``, ``vllm.outputs`` in ``sys.modules``."""
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
    outputs = types.ModuleType("vllm.outputs")
    outputs.RequestOutput = RequestOutput  # type: ignore[attr-defined]
    outputs.CompletionOutput = CompletionOutput  # type: ignore[attr-defined]
    vllm.lora = lora  # type: ignore[attr-defined]
    vllm.outputs = outputs  # type: ignore[attr-defined]
    for name, module in {
        "vllm": vllm,
        "vllm.lora": lora,
        "vllm.lora.request": lora_request,
        "vllm.outputs": outputs,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return state
