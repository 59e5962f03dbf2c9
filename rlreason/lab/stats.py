"""Statistics of an estimator's gradient over many subsamples of a frozen pool (pure functions).

Given K subsample gradients g_1..g_K (rows of G [K, D]) and a reference direction r [D]:
    mean        gbar = 1/K sum_k g_k
    variance    tr Cov(g) ~ 1/(K-1) sum_k ||g_k - gbar||^2          (unbiased trace of the covariance)
    bias        ||gbar - r||                                         (r: e.g. the estimator on the whole pool)
    noise       sqrt(tr Cov(g) / K): the typical size of gbar's own Monte-Carlo error, so a bias well
                above it is real and one near it is consistent with none
    cosine      cos(gbar, r), and the mean of cos(g_k, r) (how well one batch points the right way)
    SNR         ||gbar||^2 / tr Cov(g)                               (signal per unit of noise, one batch)
    ESS         (sum w)^2 / (n sum w^2) over a batch's n response tokens, w the importance weights the
                loss applies (Kish's effective sample size, as a share of n: 1 when all weights are equal)
With a projection (g = P grad, P a JL matrix with E[P^T P] = I) the squared norms, and so the variance,
bias and SNR, are unbiased for the full gradient's; cosines are preserved up to O(1/sqrt(dim)).
"""

from __future__ import annotations

import torch


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    denom = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(denom > 0, (a * b).sum(-1) / denom.clamp(min=1e-300), torch.zeros_like(denom))


def gradient_stats(samples: torch.Tensor, reference: torch.Tensor) -> dict:
    """Variance, bias, cosines and SNR of subsample gradients `samples` [K, D] against `reference` [D]."""
    g = samples.double()
    ref = reference.double()
    k = g.shape[0]
    if k < 2:
        raise ValueError("gradient_stats needs at least 2 subsample gradients")
    mean = g.mean(0)
    var = float(((g - mean) ** 2).sum(-1).sum() / (k - 1))
    return {
        "variance": var,
        "bias_norm": float((mean - ref).norm()),
        "bias_noise": (var / k) ** 0.5,
        "mean_norm": float(mean.norm()),
        "cosine_of_mean": float(_cos(mean, ref)),
        "cosine_per_batch": float(_cos(g, ref.expand_as(g)).mean()),
        "snr": float(mean.norm() ** 2 / var) if var > 0 else float("inf"),
    }


def zero_advantage_fractions(coefficients: torch.Tensor, response_mask: torch.Tensor, group_index: torch.Tensor) -> dict:
    """Share of groups and of response tokens whose gradient coefficient is exactly 0 (no signal)."""
    live_tok = (coefficients != 0) & response_mask.bool()
    groups = torch.unique(group_index)
    dead_groups = sum(bool(~live_tok[group_index == gi].any()) for gi in groups)
    return {"zero_group_frac": dead_groups / max(len(groups), 1),
            "zero_token_frac": float(1 - live_tok.sum() / response_mask.sum().clamp(min=1))}


def effective_sample_fraction(weights: torch.Tensor, mask: torch.Tensor) -> float:
    """Kish's effective sample size of the token weights under `mask`, as a share of the token count."""
    w = weights.double()[mask.bool()]
    if w.numel() == 0 or float((w * w).sum()) == 0:
        return 0.0
    return float(w.sum() ** 2 / (w.numel() * (w * w).sum()))
