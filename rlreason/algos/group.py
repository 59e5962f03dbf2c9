"""Group-relative advantages (GRPO, DeepSeekMath arXiv 2402.03300).

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        (scale_by_std=True)
    A_i =  r_i - mean(r_group)                                (scale_by_std=False, Dr.GRPO)

and every response token of sample i gets A_i. ``std`` uses ``ddof`` (1 = unbiased, as TRL and verl;
0 = population). Edge cases, chosen here:
- a group whose rewards are all equal (std = 0) gets A = 0, not (r - mu)/eps;
- a group of one response (G = 1) gets A = 0 (verl returns the raw reward there; we do not).
"""

from __future__ import annotations

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    std_ddof: int = 1,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> torch.Tensor:
    """Per-sample advantages [B] from rewards [B] and integer group ids [B]."""
    rewards = rewards.to(torch.float64)
    groups, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(groups), dtype=torch.float64, device=rewards.device).index_add_(0, inverse, rewards)
    mean = sums / counts
    centered = rewards - mean[inverse]
    sq = torch.zeros(len(groups), dtype=torch.float64, device=rewards.device).index_add_(0, inverse, centered**2)
    denom = (counts - std_ddof).clamp(min=1)
    std = (sq / denom).sqrt()
    degenerate = (counts < 2) | (std <= 0)
    if scale_by_std:
        adv = centered / (std[inverse] + eps)
    else:
        adv = centered
    adv = torch.where(degenerate[inverse], torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


def rloo_advantages(rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al., arXiv 2402.14740): A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mu);
    a group of one gets 0."""
    rewards = rewards.to(torch.float64)
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, rewards)
    n = counts[inverse].to(torch.float64)
    loo = (sums[inverse] - rewards) / (n - 1).clamp(min=1)
    return torch.where(n > 1, rewards - loo, torch.zeros_like(rewards)).to(torch.float32)
