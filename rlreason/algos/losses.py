"""PPO-clip policy loss with separate low/high epsilons, and loss aggregation modes.

Per token, with ratio rho = exp(logp - old_logp) and advantage A:
    l = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)
(eps_high > eps_low is DAPO's clip-higher). Aggregation of a per-token quantity l[B, T] under the
response mask m (|o_i| = sum_t m_i,t, G = number of sequences in the batch):
    seq-mean-token-mean      (GRPO)     1/G * sum_i (sum_t m*l / |o_i|)
    token-mean               (DAPO)     sum_{i,t} m*l / sum_{i,t} m
    seq-mean-token-sum-norm  (Dr.GRPO)  sum_{i,t} m*l / (G * L_gen), L_gen a constant
"""

from __future__ import annotations

import torch


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate loss [B, T] and per-token clip indicators."""
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    with torch.no_grad():
        info = {
            "ratio": ratio.detach(),
            "clipped_low": (advantages < 0) & (ratio < 1.0 - eps_low),
            "clipped_high": (advantages > 0) & (ratio > 1.0 + eps_high),
        }
    return loss, info


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, norm_len: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    masked = values * mask
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean()
    if mode == "seq-mean-token-sum-norm":
        if not norm_len:
            raise ValueError("seq-mean-token-sum-norm needs norm_len (L_gen) > 0")
        return masked.sum() / (values.shape[0] * norm_len)
    raise ValueError(f"unknown loss aggregation {mode!r}")
