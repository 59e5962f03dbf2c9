"""Truncated importance sampling between the rollout engine and the learner.

The rollout engine samples from pi_sample; the learner's old policy pi_old computes slightly
different probabilities (kernels, precision, stale weights). With per-token ratio
    r_t = pi_old(o_t) / pi_sample(o_t) = exp(old_logp_t - sampling_logp_t)
the policy-gradient term of each token is multiplied by a detached weight w:
    off            w_t = 1
    token          w_t = min(r_t, cap)                           (truncated IS, TIS; Yao et al. 2025,
                                                                 "Your efficient RL framework secretly
                                                                 brings you off-policy RL training")
    sequence-mask  w_t = 1 if prod_t r_t <= cap else 0, for every token of the sequence
                   (masked IS: a sequence whose ratio exceeds the cap is dropped, not reweighted)
The sequence ratio is the product over the response's tokens (sum of log-ratios), not a geometric
mean; a geometric mean would be cap ** (1/|o|) in these units. Chosen here, exposed as the mode.
"""

from __future__ import annotations

import math

import torch

TIS_MODES = ("off", "token", "sequence-mask")


def rollout_correction_weights(
    old_logp: torch.Tensor, sampling_logp: torch.Tensor, mask: torch.Tensor, mode: str, cap: float
) -> torch.Tensor:
    """Detached per-token weights [B, T] (zero on padding)."""
    mask = mask.to(old_logp.dtype)
    if mode == "off":
        return mask.clone()
    log_ratio = (old_logp - sampling_logp).detach() * mask
    if mode == "token":
        return torch.exp(log_ratio).clamp(max=cap) * mask
    if mode == "sequence-mask":
        keep = (log_ratio.sum(-1) <= math.log(cap)).to(mask.dtype)
        return keep[:, None] * mask
    raise ValueError(f"unknown rollout correction mode {mode!r}; choose one of {', '.join(TIS_MODES)}")
