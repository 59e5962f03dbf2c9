import math

import pytest
import torch

from rlreason.algos.kl import kl_k1, kl_k2, kl_k3
from rlreason.algos.losses import aggregate, ppo_clip_loss

LOG = math.log


def _loss(ratio, adv, lo, hi):
    logp = torch.tensor([[LOG(ratio)]], requires_grad=True)
    loss, info = ppo_clip_loss(logp, torch.zeros(1, 1), torch.tensor([[adv]]), lo, hi)
    loss.sum().backward()
    return loss.item(), logp.grad.item(), info


def test_positive_advantage_clipped_at_eps_high_0_2_not_0_28():
    # A = 1, rho = 1.25: eps_high 0.2 clips to 1.2 (no gradient); 0.28 leaves 1.25 (gradient -rho*A)
    loss, grad, info = _loss(1.25, 1.0, 0.2, 0.2)
    assert loss == pytest.approx(-1.2) and grad == 0.0 and bool(info["clipped_high"])
    loss, grad, info = _loss(1.25, 1.0, 0.2, 0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25) and not bool(info["clipped_high"])


def test_negative_advantage_clipped_at_eps_low():
    # A = -1, rho = 0.7 < 1 - 0.2: min(0.7*-1, 0.8*-1) = -0.8 -> loss 0.8, clipped, no gradient
    loss, grad, info = _loss(0.7, -1.0, 0.2, 0.28)
    assert loss == pytest.approx(0.8) and grad == 0.0 and bool(info["clipped_low"])
    # with eps_low 0.4 the ratio 0.7 is inside: loss 0.7, gradient rho*(-A)... d(-rho*A)/dlogp = -rho*A = 0.7
    loss, grad, info = _loss(0.7, -1.0, 0.4, 0.28)
    assert loss == pytest.approx(0.7) and grad == pytest.approx(0.7)


def test_pessimistic_side_is_never_clipped():
    # A > 0 with rho below 1-eps and A < 0 with rho above 1+eps keep the unclipped (worse) value
    loss, grad, _ = _loss(0.5, 1.0, 0.2, 0.2)
    assert loss == pytest.approx(-0.5) and grad == pytest.approx(-0.5)
    loss, grad, _ = _loss(1.5, -1.0, 0.2, 0.2)
    assert loss == pytest.approx(1.5) and grad == pytest.approx(1.5)


def test_k3_hand_worked_and_nonnegative():
    # pi = 0.5, pi_ref = 0.25: x = log(0.25/0.5) = -log 2; k3 = 0.5 + log 2 - 1 = 0.193147
    logp, ref = torch.tensor([LOG(0.5)]), torch.tensor([LOG(0.25)])
    assert float(kl_k3(logp, ref)) == pytest.approx(0.5 + LOG(2) - 1, abs=1e-6)
    assert float(kl_k1(logp, ref)) == pytest.approx(LOG(2), abs=1e-6)
    assert float(kl_k2(logp, ref)) == pytest.approx(0.5 * LOG(2) ** 2, abs=1e-6)
    x = torch.randn(1000) * 3
    y = torch.randn(1000) * 3
    assert (kl_k3(x, y) >= 0).all()
    assert torch.equal(kl_k3(x, x), torch.zeros(1000))


def test_k3_clamp_keeps_values_finite():
    assert math.isfinite(float(kl_k3(torch.tensor([-200.0]), torch.tensor([0.0]), clamp=10.0)))


VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


def test_token_mean():
    assert float(aggregate(VALUES, MASK, "token-mean")) == pytest.approx(10 / 4)


def test_seq_mean_token_mean():
    assert float(aggregate(VALUES, MASK, "seq-mean-token-mean")) == pytest.approx((6 / 3 + 4 / 1) / 2)


def test_seq_mean_token_sum_norm():
    assert float(aggregate(VALUES, MASK, "seq-mean-token-sum-norm", norm_len=4)) == pytest.approx(10 / (2 * 4))
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK, "sum")


def test_equal_lengths_token_mean_equals_seq_mean_token_mean():
    torch.manual_seed(0)
    logp = torch.randn(4, 5)
    loss, _ = ppo_clip_loss(logp, logp + 0.1 * torch.randn(4, 5), torch.randn(4, 5), 0.2, 0.28)
    mask = torch.ones(4, 5)
    assert float(aggregate(loss, mask, "token-mean")) == pytest.approx(float(aggregate(loss, mask, "seq-mean-token-mean")))
    # and they differ once lengths differ
    mask[0, 2:] = 0
    assert float(aggregate(loss, mask, "token-mean")) != pytest.approx(float(aggregate(loss, mask, "seq-mean-token-mean")))


def test_k3_resolves_tiny_differences():
    # fp32 drift between sampler and learner: x = 1e-4 -> k3 = x^2/2 = 5e-9, not rounded to 0
    logp = torch.tensor([-1.0])
    assert float(kl_k3(logp, logp + 1e-4)) == pytest.approx(5e-9, rel=1e-2)


def test_truncated_is_token_mode_hand_worked():
    from rlreason.algos.rollout_correction import rollout_correction_weights

    # pi_old = [0.5, 0.2, x], pi_sample = [0.25, 0.4, x] -> ratios [2, 0.5]; cap 1.5 -> [1.5, 0.5]; pad -> 0
    old = torch.log(torch.tensor([[0.5, 0.2, 0.3]]))
    samp = torch.log(torch.tensor([[0.25, 0.4, 0.9]]))
    mask = torch.tensor([[1, 1, 0]])
    w = rollout_correction_weights(old, samp, mask, "token", cap=1.5)
    assert torch.allclose(w, torch.tensor([[1.5, 0.5, 0.0]]))
    assert torch.equal(rollout_correction_weights(old, samp, mask, "off", cap=1.5), torch.tensor([[1.0, 1.0, 0.0]]))


def test_truncated_is_sequence_mask_mode_hand_worked():
    from rlreason.algos.rollout_correction import rollout_correction_weights

    # seq 0: ratios [2, 0.5] -> product 1 <= cap 2: kept; seq 1: ratios [2, 2] -> product 4 > 2: dropped;
    # seq 2: ratios [2, 2, (pad 100)] -> the pad does not count: product 4 > 2 dropped; with cap 5 kept
    old = torch.log(torch.tensor([[0.5, 0.2, 1.0], [0.4, 0.4, 1.0], [0.4, 0.4, 1.0]]))
    samp = torch.log(torch.tensor([[0.25, 0.4, 1.0], [0.2, 0.2, 1.0], [0.2, 0.2, 0.01]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0]])
    w = rollout_correction_weights(old, samp, mask, "sequence-mask", cap=2.0)
    assert torch.equal(w, torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    w = rollout_correction_weights(old, samp, mask, "sequence-mask", cap=5.0)
    assert torch.equal(w, torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="sequence-mask"):
        rollout_correction_weights(old, samp, mask, "seq", cap=2.0)
