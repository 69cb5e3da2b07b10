"""Engine settings on the command line: one set of flags for every command that loads an engine.

``spar eval ifeval``, ``spar eval judge`` and the bench scripts take ``--engine hf|vllm`` and the
settings below, turned into the same ``HFEngineConfig`` / ``VLLMEngineConfig`` a run config holds,
so the device-aware defaults (see ``shared.config``) are decided in one place.
"""

from __future__ import annotations

import argparse
from typing import TypeVar

from pydantic import ValidationError

from shared.config import HFEngineConfig, VLLMEngineConfig
from shared.engine import EngineStartError
from shared.errors import ConfigError

from .cli_types import positive_float, positive_int


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def add_engine_options(parser: argparse.ArgumentParser, batch_size: int = 16) -> None:
    """Add ``--engine`` and the HF/vLLM engine settings to ``parser``."""
    group = parser.add_argument_group("engine")
    group.add_argument(
        "--engine", choices=["hf", "vllm"], default="hf", help="hf (transformers, default) or vllm"
    )
    group.add_argument(
        "--device", default="auto", help="auto (cuda when available, else cpu), cpu, cuda (HF also cuda:N)"
    )
    group.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16", "auto"],
        default=None,
        help="weights dtype (default: float32 for hf; for vllm bfloat16 on CPU, the model's on GPU)",
    )
    group.add_argument(
        "--batch-size", type=positive_int, default=batch_size, help="HF engine rows per forward pass"
    )
    group.add_argument(
        "--kv-cache-gb",
        type=positive_float,
        default=None,
        help="vLLM KV cache in GiB (default: 1 on CPU; on GPU sized by --gpu-memory-utilization)",
    )
    group.add_argument(
        "--gpu-memory-utilization",
        type=_fraction,
        default=VLLMEngineConfig.model_fields["gpu_memory_utilization"].default,
        help="vLLM on GPU: share of the card for weights + KV cache",
    )
    group.add_argument("--max-model-len", type=positive_int, default=None, help="vLLM context cap (tokens)")
    group.add_argument("--tensor-parallel-size", type=positive_int, default=1, help="vLLM: GPUs per model")
    group.add_argument(
        "--overlong",
        choices=["skip", "truncate"],
        default="skip",
        help="a prompt + max new tokens beyond the context: skip it (empty answer) or generate fewer tokens",
    )


FLAGS = {"kv_cache_gb": "--kv-cache-gb", "max_model_len": "--max-model-len", "batch_size": "--batch-size"}


_Config = TypeVar("_Config", HFEngineConfig, VLLMEngineConfig)


def _settings(model: type[_Config], **values: object) -> _Config:
    """``model(**values)``, with an out-of-range value reported as the flag that set it."""
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{FLAGS.get(str(e['loc'][0]), '--' + str(e['loc'][0]).replace('_', '-'))}: {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid engine option: {problems}") from None


def hf_config(args: argparse.Namespace) -> HFEngineConfig:
    """The HF engine settings the flags describe."""
    return _settings(
        HFEngineConfig,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype or "float32",
        overlong=args.overlong,
    )


def vllm_config(args: argparse.Namespace) -> VLLMEngineConfig:
    """The vLLM engine settings the flags describe (``--device cuda:N`` counts as cuda)."""
    device = "cuda" if str(args.device).startswith("cuda") else args.device
    if device not in ("auto", "cpu", "cuda"):
        raise EngineStartError(f"--device {args.device} is not a vLLM device: use auto, cpu or cuda")
    return _settings(
        VLLMEngineConfig,
        device=device,
        dtype=args.dtype or "auto",
        kv_cache_gb=args.kv_cache_gb,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_model_len=args.max_model_len,
        tensor_parallel_size=args.tensor_parallel_size,
        overlong=args.overlong,
    )
