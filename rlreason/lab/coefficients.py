"""Per-token coefficients of an estimator's policy gradient, through the learner's own loss.

At the sampling policy (old log-probs = current log-probs, every ratio 1) the learner's policy-gradient
loss L (`weighted_policy_loss`: the estimator's advantages, its loss mask and token weights, the loss
aggregation) is a function of the token log-probs alone, so

    grad_theta L = sum_{i,t} c_{i,t} grad_theta log pi_theta(o_{i,t}),   c = dL / d(log pi)  [B, T]

`surrogate_coefficients` gets c by differentiating the real loss with respect to the log-prob tensor:
no model, no parameters, and no second implementation of any estimator or aggregation. The ascent
direction (what the optimizer follows) is -grad L. The sampler/learner importance correction
(`algo.tis_mode`) enters as in the learner: detached weights from the pool's sampling log-probs (the
engine's) and the policy's teacher-forced ones. With the hf engine in fp32 they agree to float noise
and every weight is 1; with vLLM, or bf16 rollouts, they do not.
"""

from __future__ import annotations

import torch

from rlreason.algos.advantages import as_estimate, resolve_estimator
from rlreason.algos.losses import POLICY_LOSSES, aggregate_weights, weighted_policy_loss
from rlreason.algos.rollout_correction import rollout_correction_weights


def importance_weights(batch, algo_cfg, logprobs: torch.Tensor) -> torch.Tensor:
    """The learner's detached sampler/learner correction [B, T] for `algo_cfg.tis_mode` (mask when off)."""
    return rollout_correction_weights(logprobs, batch.sampling_logprobs, batch.response_mask.float(), algo_cfg.tis_mode,
                                      algo_cfg.tis_cap)


def surrogate_coefficients(batch, algo_cfg, logprobs: torch.Tensor, norm_len: int | None = None, progress: float = 0.0,
                           learner_tensors: dict | None = None) -> torch.Tensor:
    """c [B, T] with grad_theta L = sum c * grad_theta logprobs, for `algo_cfg.estimator` on `batch`.
    `logprobs` [B, T]: the policy's log-probs of the sampled tokens; `learner_tensors`: what the estimator
    needs besides them (entropy for D3S, hidden states and vocab log-probs for THR and TW-GRPO)."""
    estimator = resolve_estimator(algo_cfg.estimator)
    lp = logprobs.detach().clone().requires_grad_(True)
    extra = {"entropy": torch.zeros_like(lp), **(learner_tensors or {})}
    est = as_estimate(estimator(batch, algo_cfg, {"old_logprobs": lp.detach(), "progress": progress, **extra}))
    resp_mask = batch.response_mask.float()
    mask = resp_mask if est.loss_mask is None else est.loss_mask.float() * resp_mask
    weights = aggregate_weights(mask, algo_cfg.loss_agg, norm_len)
    loss, _ = weighted_policy_loss(POLICY_LOSSES.get(algo_cfg.policy_loss), lp, lp.detach(), est.advantages * mask, mask, weights,
                                   algo_cfg.clip_eps_low, algo_cfg.clip_eps_high, importance_weights(batch, algo_cfg, lp.detach()),
                                   est.token_weights)
    (grad,) = torch.autograd.grad(loss, lp, allow_unused=True)
    return torch.zeros_like(lp) if grad is None else grad.detach()


def batch_gradient(coefficients: torch.Tensor, token_grads: torch.Tensor) -> torch.Tensor:
    """grad_theta L from c [B, T] and the token log-prob gradients [B, T, D] (or their projections)."""
    return torch.einsum("bt,btd->d", coefficients.to(token_grads.dtype), token_grads)
