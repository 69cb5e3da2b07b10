"""Top-p (nucleus) filtering without sorting the vocabulary: the same mask, a fraction of the cost.

vLLM's CPU build applies top-p by sorting every row's logits over the whole vocabulary at every
decoding step (``apply_top_k_top_p_pytorch``: sort, softmax, cumsum, scatter back). With SmolLM2's
49,152-token vocabulary and the sample stage's batches of a few hundred sequences, that sort costs
more than the model's forward pass: measured on 2 cores, [256 x 49152] float32 logits took about
2.4 s per step to filter, against 0.07 s for ``torch.topk`` of 256 candidates.

The nucleus of a row is almost always tiny (a few to a few hundred tokens), so :func:`nucleus_mask`
finds it among the ``candidates`` highest logits and falls back to the full sort only for rows whose
candidates hold less than ``p`` of the probability mass. The mask is vLLM's own rule, computed from
the other end: vLLM masks a token when the ascending cumulative probability up to and including it
is ``<= 1 - p``, i.e. when the probability mass strictly above it is ``>= p``; the highest token is
always kept. Only the order of floating-point summation differs, so a token whose mass-above equals
``p`` to the last bit could land on the other side; the sampling distribution is the nucleus
distribution either way, and the same seed gives the same tokens run after run.

Installed into vLLM's worker processes through vLLM's general-plugin entry point (see
``pyproject.toml``), on CPU only: the CUDA build has its own fused samplers. ``SPAR_VLLM_NUCLEUS=sort``
turns it off (vLLM's sort is used).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where the filter runs: the run-record code reads ENV only
    import torch

logger = logging.getLogger(__name__)

ENV = "SPAR_VLLM_NUCLEUS"
"""``topk`` (default): this module's filter on CPU; ``sort``: vLLM's own."""

CANDIDATES = 256
"""Tokens examined per row before falling back to the full sort for rows they do not cover."""


def nucleus_mask(logits: torch.Tensor, p: torch.Tensor, candidates: int = CANDIDATES) -> torch.Tensor:
    """Boolean [B, V]: True where vLLM's top-p rule masks the token out (the logits are not changed).

    ``logits`` are the already temperature-scaled logits [B, V]; ``p`` the per-row top-p [B].
    """
    import torch

    batch, vocab = logits.shape
    k = min(candidates, vocab)
    work = logits.float()
    top_logits, top_index = torch.topk(work, k, dim=-1)  # descending
    # probabilities of the candidates under the full softmax of each row
    top_probs = torch.exp(top_logits - torch.logsumexp(work, dim=-1, keepdim=True))
    above = torch.cumsum(top_probs, dim=-1) - top_probs  # mass strictly above each candidate
    p = p.to(work.dtype).unsqueeze(1)
    keep_top = above < p
    keep_top[:, 0] = True  # vLLM always keeps the highest token
    keep = torch.zeros((batch, vocab), dtype=torch.bool, device=logits.device)
    keep.scatter_(1, top_index, keep_top)
    # rows with p >= 1 keep everything (vLLM would mask only tokens of probability exactly 0,
    # which a Gumbel-max draw over float32 logits can never pick)
    whole = p[:, 0] >= 1
    # a candidate set whose last member is masked proves the nucleus ends inside it; else the row
    # may extend beyond the candidates (a flat distribution), and only the full sort can tell
    uncovered = keep_top[:, -1] & ~whole
    if bool(whole.any()):
        keep[whole] = True
    if bool(uncovered.any()):
        rows = uncovered.nonzero(as_tuple=True)[0]
        keep[rows] = ~_sorted_mask(work[rows], p[rows, 0])
    return ~keep


def _sorted_mask(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """vLLM's top-p rule by the full sort (the reference; used for rows the candidates do not cover)."""
    import torch

    ordered, index = logits.sort(dim=-1, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    masked = cumulative <= 1 - p.unsqueeze(1)
    masked[:, -1] = False
    return torch.zeros_like(masked).scatter_(1, index, masked)


def apply_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Mask ``logits`` in place outside each row's nucleus (what vLLM's function returns)."""
    return logits.masked_fill_(nucleus_mask(logits, p), float("-inf"))


def register() -> None:
    """vLLM general plugin: route top-p-only filtering on CPU through :func:`apply_top_p`.

    Loaded by vLLM in every process it starts (the worker that samples included). Rows with a top-k
    keep vLLM's path; so does everything when ``SPAR_VLLM_NUCLEUS=sort`` or the platform is not CPU.
    """
    if os.environ.get(ENV, "topk") == "sort":
        return
    try:
        from vllm.platforms import current_platform
        from vllm.v1.sample.ops import topk_topp_sampler as sampler
    except ImportError:  # another vLLM layout: leave it alone
        return
    if not current_platform.is_cpu() or getattr(sampler, "_spar_nucleus", False):
        return
    original = sampler.apply_top_k_top_p

    def apply_top_k_top_p(
        logits: torch.Tensor, k: torch.Tensor | None, p: torch.Tensor | None
    ) -> torch.Tensor:
        if k is None and p is not None and logits.device.type == "cpu":
            return apply_top_p(logits, p)
        return original(logits, k, p)

    sampler.apply_top_k_top_p = apply_top_k_top_p
    sampler._spar_nucleus = True
    logger.debug("spar: vLLM top-p filtering on CPU without sorting the vocabulary")
