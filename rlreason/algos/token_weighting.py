"""TW-GRPO token weights (Dang et al., arXiv 2505.24718), after the official code's
`compute_token_importance_kl_logs_uniform` (docs/algorithms.md, "TW-GRPO").

For one group and position t, with l_{g,t} the full-vocabulary log-probabilities of response g
(positions past a response's end take the uniform value -log V):

    m_t = mean_g l_{g,t}
    d   = clamp(m_t - l_{g,t}, -11, 11)
    D_t = mean_g sum_v (e^d - d - 1)
    n_t = (D_t - min D) / (max D - min D + 1e-8)       (min/max over the group's positions)
    w_t = 1 + (alpha - 1) n_t                          in [1, alpha]

The same w_t applies to every response of the group at position t. Weights carry no gradient
(computed from the old-policy forward). The loss is token-mean with an unweighted denominator:
sum w * m * l / sum m. Positions run up to the group's longest response.
"""

from __future__ import annotations

import math

import torch


def tw_group_weights(vocab_logprobs: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """Weights [T] for one group: vocab_logprobs [G, T, V], mask [G, T]."""
    G, T, V = vocab_logprobs.shape
    length = int(mask.sum(-1).max()) if mask.numel() else 0
    w = torch.ones(T, dtype=torch.float32)
    if length == 0 or G < 2:
        return w
    lp = vocab_logprobs[:, :length].to(torch.float64)
    valid = mask[:, :length].bool()[..., None]
    lp = torch.where(valid, lp, torch.full_like(lp, -math.log(V)))
    m = lp.mean(0, keepdim=True)
    d = (m - lp).clamp(-11.0, 11.0)
    D = (torch.expm1(d) - d).sum(-1).mean(0)  # [length]
    n = (D - D.min()) / (D.max() - D.min() + 1e-8)
    w[:length] = (1.0 + (alpha - 1.0) * n).to(torch.float32)
    return w


def tw_token_weights(vocab_logprobs: torch.Tensor, mask: torch.Tensor, group_index: torch.Tensor, alpha: float) -> torch.Tensor:
    """Weights [B, T] for a batch (zero on padding)."""
    out = torch.zeros(mask.shape, dtype=torch.float32)
    with torch.no_grad():
        for g in torch.unique(group_index):
            rows = torch.nonzero(group_index == g).flatten()
            out[rows] = tw_group_weights(vocab_logprobs[rows], mask[rows], alpha)[None, :].to(out.device)
    return out * mask.to(torch.float32)
