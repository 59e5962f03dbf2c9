"""Router regularisers: pure functions on router logits ([L, N, E]: MoE layers, tokens, experts).

Every function takes an optional token `mask` [N] (1 = real token) and returns the mean over MoE
layers, so coefficients do not scale with depth. All are off by default in the config (verl turns
the load-balancing loss off for RL; see specs/moe_router.md).

- `load_balancing_loss`: Switch-Transformer form as Megatron writes it, E * sum_i f_i * P_i with
  f_i = routed slots on expert i / (T * k) and P_i = mean router probability of expert i: 1 for a
  balanced router, E/k when k experts take every token with all the probability. `counts` [L, E]
  replaces the micro-batch's f by counts gathered over a larger batch (global-batch LB, arXiv
  2501.11873); f carries no gradient, so the gradient flows through P only.
- `z_loss`: ST-MoE's mean_t logsumexp(x_t)^2 (coefficient outside; 1e-3 is the usual one).
- `router_anchor_kl`: mean_t KL(p_old || p_theta) of the full router softmaxes, against the
  old-policy pass's logits. The spec marks this regulariser as a proposal (no published RL recipe):
  reconstructed, off by default.
"""

from __future__ import annotations

import torch


def _as_layers(x) -> torch.Tensor:
    if isinstance(x, (list, tuple)):
        x = torch.stack(list(x), dim=0)
    return x if x.dim() == 3 else x.unsqueeze(0)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the token axis (-1) of [L, N] values, counting only mask == 1 tokens."""
    if mask is None:
        return values.mean(-1)
    m = mask.to(values.dtype)
    return (values * m).sum(-1) / m.sum().clamp(min=1)


def expert_counts(indices: torch.Tensor, num_experts: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Routed slots per expert, [L, E] float, from ids [N, L, k] (-1 ids and mask == 0 tokens skipped)."""
    N, L, k = indices.shape
    w = torch.ones(N, device=indices.device) if mask is None else mask.float()
    w = w[:, None, None].expand(N, L, k)
    valid = indices >= 0
    counts = torch.zeros(L, num_experts, device=indices.device)
    layer = torch.arange(L, device=indices.device)[None, :, None].expand(N, L, k)
    flat = (layer * num_experts + indices.clamp(min=0).long())[valid]
    counts.view(-1).index_add_(0, flat, w[valid])
    return counts


def load_balancing_loss(
    logits,
    top_k: int,
    mask: torch.Tensor | None = None,
    indices: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """E * sum_i f_i P_i, averaged over layers. `indices` [N, L, k] are the experts the tokens were
    routed to (default: the logits' own top-k); `counts` [L, E] overrides f (global-batch LB)."""
    x = _as_layers(logits).float()
    L, N, E = x.shape
    probs = torch.softmax(x, dim=-1)
    if mask is None:
        P = probs.mean(1)
    else:
        m = mask.to(probs.dtype)
        P = (probs * m[None, :, None]).sum(1) / m.sum().clamp(min=1)
    if counts is None:
        if indices is None:
            indices = torch.topk(x, top_k, dim=-1).indices.permute(1, 0, 2)
        counts = expert_counts(indices, E, mask)
    f = counts.detach() / counts.detach().sum(-1, keepdim=True).clamp(min=1e-12)
    return (E * (f * P).sum(-1)).mean()


def z_loss(logits, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean over tokens of logsumexp(router logits)^2, averaged over layers."""
    x = _as_layers(logits).float()
    return _masked_mean(torch.logsumexp(x, dim=-1).pow(2), mask).mean()


def router_anchor_kl(old_logits, logits, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean over tokens of KL(softmax(old) || softmax(new)), averaged over layers; `old` carries no gradient."""
    old = torch.log_softmax(_as_layers(old_logits).detach().float(), dim=-1)
    new = torch.log_softmax(_as_layers(logits).float(), dim=-1)
    kl = (old.exp() * (old - new)).sum(-1)
    return _masked_mean(kl, mask).mean()


def freeze_routers(model) -> int:
    """Stop every router weight from training (build the optimizer afterwards, from the parameters
    that still require grad). Qwen2-MoE's `shared_expert_gate` (a sigmoid gate on the always-on
    shared expert, not a routing decision) keeps training. Returns the number of frozen tensors."""
    from rlreason.moe.router import find_routers

    frozen = 0
    for router in find_routers(model):
        for p in router.parameters():
            p.requires_grad_(False)
            frozen += 1
    return frozen
