"""The five preference objectives of the actor trainer, as pure functions of per-sequence log-probs.

Notation (docs/objectives.md): ``logp(y|x)`` is the SUM of the policy's token log-probs over the response;
``ref`` the same under the frozen reference; ``r(x, y) = logp(y|x) - ref_logp(y|x)``; ``sigma`` the
logistic function. Every function returns the per-item (unreduced) loss, so that it can be checked
against hand-computed values; the trainer averages over the batch and adds the optional SFT terms
(SPaR's ``sft_weight``, IOPO's alpha) from per-token NLL.

Sanity values: at initialisation (policy == reference) every sigmoid objective is log 2 = 0.693147
per item, and every IPO objective (1 / (2 beta))^2 (25.0 for beta = 0.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

OBJECTIVES: tuple[str, ...] = ("dpo", "ipo", "sr_dpo", "sr_ipo", "iopo")


def _margin(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> Tensor:
    """m = r(x, y_w) - r(x, y_l)."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> Tensor:
    """DPO (Rafailov et al. 2023): L = -log sigma(beta m).

    With label smoothing eps (conservative DPO): L = -(1-eps) log sigma(beta m) - eps log sigma(-beta m).
    """
    m = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * m) - label_smoothing * F.logsigmoid(-beta * m)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """IPO (Azar et al. 2023): L = (m - 1/(2 beta))^2, on sequence-level SUMS (not length-normalised)."""
    m = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (m - 1.0 / (2.0 * beta)) ** 2


def _sr_delta(
    policy_chosen_logps_p: Tensor,
    policy_rejected_logps_p: Tensor,
    ref_chosen_logps_p: Tensor,
    ref_rejected_logps_p: Tensor,
    beta: float,
) -> Tensor:
    """Delta = beta [r(p+x, y_w) - r(p+x, y_l)], computed with the current policy under stop-gradient."""
    m_p = _margin(policy_chosen_logps_p, policy_rejected_logps_p, ref_chosen_logps_p, ref_rejected_logps_p)
    return (beta * m_p).detach()


def sr_dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    policy_chosen_logps_p: Tensor,
    policy_rejected_logps_p: Tensor,
    ref_chosen_logps_p: Tensor,
    ref_rejected_logps_p: Tensor,
    beta: float = 0.1,
    lam: float = 0.5,
) -> Tensor:
    """Sr-DPO (Yu et al. 2024): L = -log sigma(beta m - lam Delta); ``_p``: Sr prompt p prepended."""
    m = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    delta = _sr_delta(
        policy_chosen_logps_p, policy_rejected_logps_p, ref_chosen_logps_p, ref_rejected_logps_p, beta
    )
    return -F.logsigmoid(beta * m - lam * delta)


def sr_ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    policy_chosen_logps_p: Tensor,
    policy_rejected_logps_p: Tensor,
    ref_chosen_logps_p: Tensor,
    ref_rejected_logps_p: Tensor,
    beta: float = 0.1,
    lam: float = 0.5,
) -> Tensor:
    """Sr-IPO (Yu et al. 2024): L = (m - lam Delta - 1/(2 beta))^2."""
    m = _margin(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    delta = _sr_delta(
        policy_chosen_logps_p, policy_rejected_logps_p, ref_chosen_logps_p, ref_rejected_logps_p, beta
    )
    return (m - lam * delta - 1.0 / (2.0 * beta)) ** 2


def iopo_loss(
    policy_logps_11: Tensor,
    policy_logps_12: Tensor,
    policy_logps_21: Tensor,
    policy_logps_22: Tensor,
    ref_logps_11: Tensor,
    ref_logps_12: Tensor,
    ref_logps_21: Tensor,
    ref_logps_22: Tensor,
    beta: float = 0.1,
) -> Tensor:
    """IOPO (Zhang et al. 2024): L = -log sigma(beta [(r11 - r12) + (r22 - r21)]); ``ij`` = y_j under x_i.

    One sigmoid over the SUM of the two margins -- not the sum of two DPO losses.
    """
    r11 = policy_logps_11 - ref_logps_11
    r12 = policy_logps_12 - ref_logps_12
    r21 = policy_logps_21 - ref_logps_21
    r22 = policy_logps_22 - ref_logps_22
    return -F.logsigmoid(beta * ((r11 - r12) + (r22 - r21)))


def sequence_logps(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Summed log-prob of the labelled tokens of each sequence, and the number of such tokens.

    ``logits`` [B, T, V] are the model outputs for the input ids; ``labels`` [B, T] hold the same ids
    with ``ignore_index`` on prompt and padding positions. The usual one-token shift is applied here.
    """
    logits = logits[:, :-1, :]
    labels = labels[:, 1:]
    mask = labels != ignore_index
    safe = torch.where(mask, labels, torch.zeros_like(labels))
    token_logps = torch.gather(logits.float().log_softmax(-1), 2, safe.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(-1), mask.sum(-1)
