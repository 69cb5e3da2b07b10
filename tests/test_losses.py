"""The five objectives against hand-computed values, their values at initialisation, and stop-gradient."""

import math

import pytest
import torch

from shared.losses import dpo_loss, iopo_loss, ipo_loss, sequence_logps, sr_dpo_loss, sr_ipo_loss

LOG2 = math.log(2.0)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_every_objective_at_initialisation() -> None:
    x = t(-12.0, -30.5, -7.25)
    beta = 0.1
    assert torch.allclose(
        dpo_loss(x, x + 1, x, x + 1, beta=beta), torch.full((3,), LOG2, dtype=torch.float64)
    )
    assert torch.allclose(
        ipo_loss(x, x - 2, x, x - 2, beta=beta), torch.full((3,), 25.0, dtype=torch.float64)
    )
    args8 = (x, x - 1, x, x - 1, x + 3, x - 4, x + 3, x - 4)
    assert torch.allclose(
        sr_dpo_loss(*args8, beta=beta, lam=0.5), torch.full((3,), LOG2, dtype=torch.float64)
    )
    assert torch.allclose(
        sr_ipo_loss(*args8, beta=beta, lam=0.5), torch.full((3,), 25.0, dtype=torch.float64)
    )
    assert torch.allclose(
        iopo_loss(x, x - 1, x - 2, x - 3, x, x - 1, x - 2, x - 3, beta=beta),
        torch.full((3,), LOG2, dtype=torch.float64),
    )
    assert ipo_loss(x, x, x, x, beta=0.25)[0].item() == pytest.approx(4.0)


def test_dpo_by_hand() -> None:
    # r_w = -10 - (-12) = 2 ; r_l = -20 - (-19) = -1 ; m = 3
    loss = dpo_loss(t(-10.0), t(-20.0), t(-12.0), t(-19.0), beta=0.5)
    assert loss.item() == pytest.approx(-math.log(sigmoid(1.5)))
    smoothed = dpo_loss(t(-10.0), t(-20.0), t(-12.0), t(-19.0), beta=0.5, label_smoothing=0.2)
    assert smoothed.item() == pytest.approx(-0.8 * math.log(sigmoid(1.5)) - 0.2 * math.log(sigmoid(-1.5)))


def test_ipo_uses_sums_not_length_normalised_ratios() -> None:
    loss = ipo_loss(t(-10.0), t(-20.0), t(-12.0), t(-19.0), beta=0.1)
    assert loss.item() == pytest.approx((3.0 - 5.0) ** 2)


def test_sr_objectives_by_hand() -> None:
    # m = 3 as above; with the Sr prompt: r_w^p = 1, r_l^p = -2 -> Delta = beta * 3
    base = (t(-10.0), t(-20.0), t(-12.0), t(-19.0))
    p = (t(-5.0), t(-9.0), t(-6.0), t(-7.0))
    beta, lam = 0.2, 0.5
    delta = beta * 3.0
    assert sr_dpo_loss(*base, *p, beta=beta, lam=lam).item() == pytest.approx(
        -math.log(sigmoid(beta * 3.0 - lam * delta))
    )
    assert sr_ipo_loss(*base, *p, beta=beta, lam=lam).item() == pytest.approx(
        (3.0 - lam * delta - 1 / (2 * beta)) ** 2
    )


def test_iopo_is_one_sigmoid_over_the_sum_of_margins() -> None:
    # r11 = 1, r12 = -1, r21 = 0.5, r22 = 2 -> (1 - -1) + (2 - 0.5) = 3.5
    pol = (t(-9.0), t(-11.0), t(-7.5), t(-6.0))
    ref = (t(-10.0), t(-10.0), t(-8.0), t(-8.0))
    beta = 0.3
    loss = iopo_loss(*pol, *ref, beta=beta).item()
    assert loss == pytest.approx(-math.log(sigmoid(beta * 3.5)))
    two_dpo = -math.log(sigmoid(beta * 2.0)) - math.log(sigmoid(beta * 1.5))
    assert loss != pytest.approx(two_dpo)


def test_no_gradient_flows_through_the_sr_delta() -> None:
    base = [t(-10.0).requires_grad_(), t(-20.0).requires_grad_(), t(-12.0), t(-19.0)]
    p = [t(-5.0).requires_grad_(), t(-9.0).requires_grad_(), t(-6.0), t(-7.0)]
    for fn in (sr_dpo_loss, sr_ipo_loss):
        loss = fn(*base, *p, beta=0.1, lam=0.5).sum()
        grads = torch.autograd.grad(loss, base[:2] + p[:2], allow_unused=True)
        assert grads[0] is not None and grads[0].abs().item() > 0
        assert grads[2] is None and grads[3] is None


def test_sequence_logps_sums_only_labelled_tokens() -> None:
    logits = torch.log(
        torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]]])
    )
    labels = torch.tensor([[-100, -100, 2, 0]])  # prompt = first two tokens
    logps, count = sequence_logps(logits, labels)
    assert count.item() == 2
    assert logps.item() == pytest.approx(math.log(0.3) + math.log(0.2), rel=1e-5)
