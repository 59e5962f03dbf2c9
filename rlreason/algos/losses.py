"""PPO-clip policy loss with separate low/high epsilons, and loss aggregation modes.

Per token, with ratio rho = exp(logp - old_logp) and advantage A:
    l = -min(rho * A, clip(rho, 1 - eps_low, 1 + eps_high) * A)
(eps_high > eps_low is DAPO's clip-higher). Aggregation of a per-token quantity l[B, T] under the
response mask m (|o_i| = sum_t m_i,t, G = number of sequences in the batch):
    seq-mean-token-mean      (GRPO)     1/G * sum_i (sum_t m*l / |o_i|)   (G: sequences with |o_i| > 0)
    token-mean               (DAPO)     sum_{i,t} m*l / sum_{i,t} m
    seq-mean-token-sum-norm  (Dr.GRPO)  sum_{i,t} m*l / (G * L_gen), L_gen a constant
"""

from __future__ import annotations

import torch

from rlreason.registry import Registry


def ppo_clip_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token clipped surrogate loss [B, T] and per-token clip indicators."""
    return clipped_surrogate(torch.exp(logp - old_logp), advantages, eps_low, eps_high)


def clipped_surrogate(ratio: torch.Tensor, adv: torch.Tensor, eps_low: float, eps_high: float):
    """-min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) and the clip indicators."""
    loss = -torch.minimum(ratio * adv, torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv)
    with torch.no_grad():
        info = {
            "ratio": ratio.detach(),
            "clipped_low": (adv < 0) & (ratio < 1.0 - eps_low),
            "clipped_high": (adv > 0) & (ratio > 1.0 + eps_high),
        }
    return loss, info


class UnknownLoss(ValueError):
    """`algo.loss_agg` or `algo.policy_loss` names nothing registered."""


# name -> weights(mask [B, T], norm_len) -> w [B, T]; the aggregate of l is (w * l).sum()
LOSS_AGGREGATIONS = Registry("loss aggregation", "algo.loss_agg", error=UnknownLoss)
# name -> loss(logp, old_logp, advantages, mask, eps_low, eps_high) -> (per-token loss [B, T], clip info)
POLICY_LOSSES = Registry("policy loss", "algo.policy_loss", error=UnknownLoss)


@LOSS_AGGREGATIONS.register("token-mean")
def token_mean(m: torch.Tensor, norm_len: int | None = None) -> torch.Tensor:
    """DAPO: every token in the batch weighs the same."""
    return m / m.sum().clamp(min=1.0)


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(m: torch.Tensor, norm_len: int | None = None) -> torch.Tensor:
    """GRPO: mean over each sequence's tokens, then over sequences. Rows with no token in the loss
    (e.g. samples D3S dropped) do not count as sequences."""
    lengths = m.sum(-1, keepdim=True)
    return m / lengths.clamp(min=1.0) / (lengths > 0).sum().clamp(min=1)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(m: torch.Tensor, norm_len: int | None = None) -> torch.Tensor:
    """Dr.GRPO: the sum over tokens divided by a constant G * L_gen (no length bias)."""
    if not norm_len:
        raise ValueError("seq-mean-token-sum-norm needs norm_len (L_gen) > 0")
    return m / (m.shape[0] * norm_len)


def aggregate_weights(mask: torch.Tensor, mode: str, norm_len: int | None = None) -> torch.Tensor:
    """Per-token weights w[B, T] with aggregate(l, mask, mode) == (w * l).sum() for every l.

    Every mode is linear in l with weights that depend on the mask alone, so a mini-batch split across
    data-parallel ranks can weight each rank's tokens by the whole mini-batch's denominators."""
    return LOSS_AGGREGATIONS.get(mode)(mask.float(), norm_len)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, norm_len: int | None = None) -> torch.Tensor:
    """The aggregate of a per-token quantity `values` [B, T] under `mask` in mode `mode` (for metrics; the loss
    uses `aggregate_weights`). Summed in float64, so a mean of equal values is that value exactly."""
    return (LOSS_AGGREGATIONS.get(mode)(mask.double(), norm_len) * values.double()).sum().to(values.dtype)


def weighted_policy_loss(policy_loss, logp, old_logp, advantages, mask, weights, eps_low: float, eps_high: float,
                         is_weights=None, token_weights=None) -> tuple[torch.Tensor, dict]:
    """The policy-gradient term of the learner's loss: sum_{i,t} w * l * is_w * tw, with l the policy
    loss per token, w the aggregation weights (`aggregate_weights`), is_w the sampler/learner correction
    and tw an estimator's token weights (each optional). The learner and the estimator lab share it."""
    per_token, info = policy_loss(logp, old_logp, advantages, mask, eps_low, eps_high)
    if is_weights is not None:
        per_token = per_token * is_weights
    if token_weights is not None:
        per_token = per_token * token_weights
    return (per_token * weights).sum(), info


def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float,
    eps_high: float,
    token_level: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (arXiv 2507.18071): the sequence-level ratio s_i = exp(mean_t log rho_i,t) in the clipped
    surrogate, returned per token [B, T] so that `seq-mean-token-mean` aggregation gives
    1/G sum_i -min(s_i A_i, clip(s_i) A_i) exactly.

    token_level (GSPO-token): s_i,t = sg[s_i] * pi(o_t) / sg[pi(o_t)]: the value of s_i with each
    token's own gradient, so per-token advantages can be used; with a constant A_i it equals GSPO."""
    m = mask.to(logp.dtype)
    log_ratio = (logp - old_logp) * m
    seq_log_ratio = log_ratio.sum(-1) / m.sum(-1).clamp(min=1.0)
    if token_level:
        ratio = torch.exp(seq_log_ratio.detach()[:, None] + logp - logp.detach())
        adv = advantages
    else:
        ratio = torch.exp(seq_log_ratio)[:, None].expand_as(logp)
        # one advantage per sequence: the mean over its tokens in the loss (= A_i for broadcast estimators)
        adv = ((advantages * m).sum(-1) / m.sum(-1).clamp(min=1.0))[:, None].expand_as(logp)
    return clipped_surrogate(ratio, adv, eps_low, eps_high)



@POLICY_LOSSES.register("ppo")
def ppo(logp, old_logp, advantages, mask, eps_low, eps_high):
    """The token-level ratio (GRPO, DAPO)."""
    return ppo_clip_loss(logp, old_logp, advantages, eps_low, eps_high)


@POLICY_LOSSES.register("gspo")
def gspo(logp, old_logp, advantages, mask, eps_low, eps_high):
    """The sequence-level ratio, one advantage per sequence."""
    return gspo_loss(logp, old_logp, advantages, mask, eps_low, eps_high)


@POLICY_LOSSES.register("gspo-token")
def gspo_token(logp, old_logp, advantages, mask, eps_low, eps_high):
    """The sequence-level ratio's value with each token's own gradient and advantage."""
    return gspo_loss(logp, old_logp, advantages, mask, eps_low, eps_high, token_level=True)
