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
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where the filter runs: the run-record code reads ENV only
    import torch

logger = logging.getLogger(__name__)

ENV = "SPAR_VLLM_NUCLEUS"
"""``topk`` (default): this module's filter on CPU; ``sort``: vLLM's own."""

MARGIN = 10.0
"""First tier: the tokens within this many nats of their row's highest logit (a probability at least
e^-10 of the top token's), almost always a superset of the nucleus and a few dozen tokens."""

CANDIDATES = 1024
"""Second tier, for rows whose nucleus reaches below the margin: the top tokens by ``torch.topk``."""


@dataclass
class Nucleus:
    """Which tokens each row keeps: listed (``rows``/``cols``) for the rows the candidate tiers
    settled, every token of the ``whole`` rows (p >= 1), and a boolean mask per row that needed the
    full sort (``sorted_rows``/``sorted_masked``)."""

    rows: torch.Tensor
    cols: torch.Tensor
    whole: torch.Tensor
    sorted_rows: torch.Tensor
    sorted_masked: torch.Tensor


def find_nucleus(
    logits: torch.Tensor, p: torch.Tensor, margin: float = MARGIN, candidates: int = CANDIDATES
) -> Nucleus:
    """The tokens vLLM's top-p rule keeps in each row of ``logits`` (temperature-scaled, [B, V]).

    Three tiers, each exact where it decides: the tokens within ``margin`` of the row's maximum,
    ordered per row on a compact array; then the top ``candidates`` for the rows the first did not
    settle; then vLLM's full sort for the rest. The [B, V] passes are the softmax normaliser, the
    row maxima and one comparison; nothing of that size is written but the comparison.
    """
    import torch

    batch, vocab = logits.shape
    device = logits.device
    work = logits if logits.dtype == torch.float32 else logits.float()
    p = p.to(device=device, dtype=torch.float64)
    # rows with p >= 1 keep everything (vLLM would mask only tokens of probability exactly 0,
    # which a Gumbel-max draw over float32 logits can never pick)
    whole = p >= 1
    todo = ~whole
    kept_rows: list[torch.Tensor] = []
    kept_cols: list[torch.Tensor] = []
    empty = torch.empty(0, dtype=torch.long, device=device)
    sorted_rows, sorted_masked = empty, torch.empty((0, vocab), dtype=torch.bool, device=device)
    if bool(todo.any()):
        lse = torch.logsumexp(work, dim=-1)
        near = work >= (work.amax(dim=-1, keepdim=True) - margin)
        rows, cols = near.nonzero(as_tuple=True)
        if not bool(todo.all()):
            inside = todo[rows]
            rows, cols = rows[inside], cols[inside]
        todo &= ~_settle(work, lse, p, rows, cols, kept_rows, kept_cols)
        if bool(todo.any()):
            left = todo.nonzero(as_tuple=True)[0]
            k = min(candidates, vocab)
            index = torch.topk(work[left], k, dim=-1).indices
            picked = (left.repeat_interleave(k), index.reshape(-1))
            todo &= ~_settle(work, lse, p, *picked, kept_rows, kept_cols)
        if bool(todo.any()):
            sorted_rows = todo.nonzero(as_tuple=True)[0]
            sorted_masked = _sorted_mask(work[sorted_rows], p[sorted_rows].to(work.dtype))
    return Nucleus(
        rows=torch.cat(kept_rows) if kept_rows else empty,
        cols=torch.cat(kept_cols) if kept_cols else empty,
        whole=whole.nonzero(as_tuple=True)[0],
        sorted_rows=sorted_rows,
        sorted_masked=sorted_masked,
    )


def _settle(
    work: torch.Tensor,
    lse: torch.Tensor,
    p: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    kept_rows: list[torch.Tensor],
    kept_cols: list[torch.Tensor],
) -> torch.Tensor:
    """Apply vLLM's rule to each row's candidates (``rows``/``cols``; they must include the row's
    highest token), append the kept tokens of the rows it settles, and return which rows [B] it
    settled.

    A row is settled when its lowest candidate is masked: then the nucleus ends among the candidates
    and every token outside them (lower still) is masked too. Candidates are ordered per row on one
    compact array (value descending within row); the running mass is summed in float64 so that row
    offsets subtract exactly enough.
    """
    import torch

    batch = work.shape[0]
    settled = torch.zeros(batch, dtype=torch.bool, device=work.device)
    if rows.numel() == 0:
        return settled
    values = work[rows, cols]
    order = torch.argsort(values, descending=True, stable=True)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, cols, values = rows[order], cols[order], values[order]
    probs = torch.exp(values.double() - lse[rows].double())
    before = torch.cumsum(probs, 0) - probs  # mass of all earlier candidates (earlier rows too)
    counts = torch.bincount(rows, minlength=batch)
    starts = torch.cumsum(counts, 0) - counts
    present = counts > 0
    above = before - before[starts[rows]]  # mass strictly above, within the row
    keep = above < p[rows]
    keep[starts[present]] = True  # vLLM always keeps the highest token
    settled[present] = ~keep[(starts + counts - 1)[present]]
    chosen = settled[rows] & keep
    kept_rows.append(rows[chosen])
    kept_cols.append(cols[chosen])
    return settled


def nucleus_mask(
    logits: torch.Tensor, p: torch.Tensor, margin: float = MARGIN, candidates: int = CANDIDATES
) -> torch.Tensor:
    """Boolean [B, V]: True where vLLM's top-p rule masks the token out (for tests and inspection)."""
    import torch

    found = find_nucleus(logits, p, margin, candidates)
    masked = torch.ones(logits.shape, dtype=torch.bool, device=logits.device)
    masked[found.rows, found.cols] = False
    masked[found.whole] = False
    masked[found.sorted_rows] = found.sorted_masked
    return masked


def _sorted_mask(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """vLLM's top-p rule by the full sort (the reference; used for rows no candidate tier settles)."""
    import torch

    ordered, index = logits.sort(dim=-1, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    masked = cumulative <= 1 - p.unsqueeze(1)
    masked[:, -1] = False
    return torch.zeros_like(masked).scatter_(1, index, masked)


def apply_top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``logits`` with -inf outside each row's nucleus (what vLLM's function returns): a fresh tensor
    of -inf with the kept values copied in, cheaper than masking [B, V] in place."""
    import torch

    found = find_nucleus(logits, p)
    out = torch.full_like(logits, float("-inf"))
    out[found.rows, found.cols] = logits[found.rows, found.cols]
    if found.whole.numel():
        out[found.whole] = logits[found.whole]
    if found.sorted_rows.numel():
        out[found.sorted_rows] = logits[found.sorted_rows].masked_fill(found.sorted_masked, float("-inf"))
    return out


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
