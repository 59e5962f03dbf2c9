import math

import torch

from rlreason.algos import ESTIMATORS
from rlreason.algos.group import group_advantages
from rlreason.config import AlgoConfig


def test_group_advantages_unbiased_std_hand_worked():
    # group 0: r = [1, 0, 0, 1] -> mean 0.5, unbiased std sqrt(1/3) = 0.57735 -> A = +-0.5/0.57735 = +-0.866025
    # group 1: r = [2, 0] -> mean 1, unbiased std sqrt(2) -> A = +-0.707107
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 0.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    a = group_advantages(r, g, std_ddof=1, eps=0.0)
    expected = [0.866025, -0.866025, -0.866025, 0.866025, 0.707107, -0.707107]
    assert torch.allclose(a, torch.tensor(expected), atol=1e-5)


def test_group_advantages_population_std_and_eps():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    g = torch.zeros(4, dtype=torch.long)
    a = group_advantages(r, g, std_ddof=0, eps=0.0)  # population std 0.5 -> +-1
    assert torch.allclose(a, torch.tensor([1.0, -1.0, -1.0, 1.0]))
    a = group_advantages(r, g, std_ddof=0, eps=0.5)  # 0.5 / (0.5 + 0.5)
    assert torch.allclose(a, torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_group_advantages_without_std_scaling_is_dr_grpo():
    r = torch.tensor([3.0, 1.0, 2.0])
    a = group_advantages(r, torch.zeros(3, dtype=torch.long), scale_by_std=False)
    assert torch.allclose(a, torch.tensor([1.0, -1.0, 0.0]))


def test_degenerate_groups_get_zero_advantage():
    # all-equal group (std 0) and a group of one response both get A = 0, never NaN or r/eps
    r = torch.tensor([1.0, 1.0, 1.0, 0.7])
    g = torch.tensor([0, 0, 0, 1])
    a = group_advantages(r, g, std_ddof=1, eps=1e-6)
    assert torch.equal(a, torch.zeros(4))


def test_groups_need_not_be_contiguous():
    r = torch.tensor([1.0, 5.0, 0.0, 5.0])
    g = torch.tensor([7, 3, 7, 3])
    a = group_advantages(r, g, std_ddof=0, eps=0.0)
    assert torch.allclose(a, torch.tensor([1.0, 0.0, -1.0, 0.0]))


def test_grpo_estimator_broadcasts_over_response_tokens():
    class B:
        rewards = torch.tensor([1.0, 0.0])
        group_index = torch.tensor([0, 0])
        response_mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
        gen_mask = response_mask  # RolloutBatch.gen_mask: the sampled tokens (all of them in a single-turn batch)

    adv = ESTIMATORS.get("grpo")(B, AlgoConfig(std_ddof=0, adv_eps=0.0), {})
    assert adv.shape == (2, 3)
    assert torch.allclose(adv, torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]))
    assert not math.isnan(float(adv.sum()))
