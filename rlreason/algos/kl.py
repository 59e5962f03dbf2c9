"""Per-token KL estimators between the policy and a reference (Schulman, "Approximating KL").

With log-ratio x = log pi_ref - log pi_theta on tokens sampled from pi_theta:
    k1 = -x                     unbiased, can be negative
    k2 = x^2 / 2
    k3 = exp(x) - x - 1         >= 0, zero iff the two agree (GRPO's choice)
k3 is computed as expm1(x) - x, so a log-ratio of 1e-6 (fp32 drift between two engines) gives
5e-13 rather than 0. The log-ratio is clamped to [-clamp, clamp] before exponentiating (verl's "low_var_kl" clamps
the result to [-10, 10]; clamping the input keeps the gradient finite as well).
"""

from __future__ import annotations

import torch


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, clamp: float = 10.0) -> torch.Tensor:
    x = (ref_logp - logp).clamp(-clamp, clamp)
    return torch.expm1(x) - x  # = exp(x) - 1 - x, without cancellation when x is tiny
