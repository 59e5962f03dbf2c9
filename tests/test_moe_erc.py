"""The ERC loss, hand-worked (specs/moe_routing_methods.md section 2)."""

import pytest
import torch

from rlreason.moe.erc import coupling_matrix, erc_loss, proxy_noise_bounds

R = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
W = torch.stack([torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[3.0, 0.0], [0.0, 0.5]])])  # W_g^0, W_g^1


def test_coupling_matrix_and_loss_by_hand():
    torch.testing.assert_close(coupling_matrix(R, W), torch.tensor([[2.0, 3.0], [1.0, 0.5]]))
    # a = 1: i=0: relu(3-2) + relu(1-2) = 1; i=1: relu(1-.5) + relu(3-.5) = 3; (1 + 3) / 4
    assert float(erc_loss(R, W, 1.0, perturb=False)) == pytest.approx(1.0)
    # a = .5: i=0: relu(3-1) + relu(1-1) = 2; i=1: relu(1-.25) + relu(3-.25) = 3.5; 5.5 / 4
    assert float(erc_loss(R, W, 0.5, perturb=False)) == pytest.approx(1.375)


def test_a_coupled_pair_costs_nothing_and_one_expert_is_free():
    # M = [[2, 1], [.5, 3]]: every proxy prefers its own expert and every expert its own proxy
    W_ok = torch.stack([torch.tensor([[2.0, 0.0], [0.0, 0.5]]), torch.tensor([[1.0, 0.0], [0.0, 3.0]])])
    torch.testing.assert_close(coupling_matrix(R, W_ok), torch.tensor([[2.0, 1.0], [0.5, 3.0]]))
    assert float(erc_loss(R, W_ok, 1.0, perturb=False)) == 0.0
    assert float(erc_loss(R[:1], W[:1], 1.0)) == 0.0


def test_noise_bounds_stay_in_each_proxys_cell_and_gradients_reach_router_and_experts():
    R3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    torch.testing.assert_close(proxy_noise_bounds(R3), torch.tensor([0.5, 0.5, 1 / (2 * 2 ** 0.5)]))
    gen = torch.Generator().manual_seed(0)
    Rg = torch.randn(6, 5, generator=gen).requires_grad_(True)
    Wg = torch.randn(6, 4, 5, generator=gen).requires_grad_(True)
    eps = proxy_noise_bounds(Rg)
    nearest = (torch.cdist(Rg, Rg) + torch.diag(torch.full((6,), float("inf")))).min(1).values
    # |delta - 1| <= eps_i per coordinate, so ||R~_i - R_i|| <= eps_i ||R_i|| = half the distance to the nearest proxy
    for seed in range(20):
        u = torch.rand(Rg.shape, generator=torch.Generator().manual_seed(seed))
        perturbed = Rg * (1 + eps[:, None] * (2 * u - 1))
        assert ((perturbed - Rg).abs() <= eps[:, None] * Rg.abs() + 1e-6).all()
    assert (eps * Rg.norm(dim=1) <= 0.5 * nearest + 1e-6).all()
    loss = erc_loss(Rg, Wg, 1.0, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert loss > 0 and Rg.grad.abs().sum() > 0 and Wg.grad.abs().sum() > 0


def test_the_loss_does_not_depend_on_any_batch_and_is_seeded():
    gen = torch.Generator().manual_seed(0)
    Rg, Wg = torch.randn(4, 3, generator=gen), torch.randn(4, 2, 3, generator=gen)
    a = erc_loss(Rg, Wg, generator=torch.Generator().manual_seed(7))
    b = erc_loss(Rg, Wg, generator=torch.Generator().manual_seed(7))
    c = erc_loss(Rg, Wg, generator=torch.Generator().manual_seed(8))
    assert float(a) == float(b) and float(a) != float(c)
