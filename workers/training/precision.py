"""The precision a training run computes in, resolved for the machine it runs on.

Light on purpose (torch and the config only): the stage records and the fork check resolve it for
a config without importing the trainers.
"""

from __future__ import annotations

from typing import Literal

import torch

from shared.config import TrainCommon
from workers.hardware import cpu_has_native_bf16, cuda_available


def model_dtype(cfg: TrainCommon, cuda: bool | None = None) -> torch.dtype:
    """The dtype the trained (and reference) weights load in: ``auto`` is bfloat16 on GPU, float32 on CPU.

    bfloat16 halves weight and activation memory on GPU; on CPU, fp32 is faster than emulated bf16 for
    most kernels and keeps the small test models' losses exact.
    """
    cuda = cuda_available() if cuda is None else cuda
    if cfg.dtype == "auto":
        return torch.bfloat16 if cuda else torch.float32
    return getattr(torch, cfg.dtype)


Precision = Literal["float32", "bf16_mixed", "bfloat16"]
"""How a training run computes: float32 throughout, bfloat16 autocast over float32 master weights
(``bf16_mixed``), or bfloat16 weights (autocast on as well)."""


def resolve_precision(
    cfg: TrainCommon, cuda: bool | None = None, native_bf16: bool | None = None
) -> Precision:
    """The precision ``cfg`` trains in on this machine (``cuda``/``native_bf16`` override the detection).

    ``bf16: auto`` turns mixed precision on where bfloat16 is computed in hardware: every GPU the
    trainers support, and CPUs with AVX512-BF16 or AMX (a SmolLM2 forward and backward pass over
    4 x 640 tokens: 14.0 s in float32, 8.3 s under bfloat16 autocast on such a Xeon). Elsewhere
    bfloat16 is emulated and slower than float32, so auto stays in float32 there.
    """
    cuda = cuda_available() if cuda is None else cuda
    if model_dtype(cfg, cuda) == torch.bfloat16:
        return "bfloat16"
    if cfg.bf16 == "auto":
        native = cuda or (cpu_has_native_bf16() if native_bf16 is None else native_bf16)
        return "bf16_mixed" if native else "float32"
    return "bf16_mixed" if cfg.bf16 else "float32"
