"""The expert-router coupling (ERC) loss ("Coupling Experts and Routers in Mixture-of-Experts via an
Auxiliary Loss", arXiv 2512.23447; equations from secondary summaries, see specs/moe_routing_methods.md).

Row R_i of a router's weight is a proxy token for the tokens expert i receives. Perturb it, feed every
proxy through every expert's gate projection W_g^j [I, H] (the pre-activation half of gate_up_proj),
and ask that each proxy excite its own expert most and each expert respond most to its own proxy:

    eps_i   = min_{j != i} ||R_i - R_j|| / (2 ||R_i||)       (no gradient; recomputed every call)
    R~_i    = R_i * delta_i,  delta_i ~ U(1 - eps_i, 1 + eps_i)^H   (no gradient through delta)
    M_ij    = || W_g^j R~_i ||_2                              [E, E]
    L       = 1/E^2 sum_i sum_{j != i} relu(M_ij - a M_ii) + relu(M_ji - a M_ii)

The noise stays within half the distance to the nearest other proxy, so R~_i stays in i's cell. The cost
is O(E^2 I H) per layer, independent of the batch: the learner adds it once per optimizer step. The
model's loss is the sum over MoE layers (our choice; the paper trains from scratch and does not say).
"""

from __future__ import annotations

import torch


def proxy_noise_bounds(router_weight: torch.Tensor) -> torch.Tensor:
    """eps [E]: half the distance from each router row to its nearest other row, relative to its norm."""
    R = router_weight.detach().float()
    dist = torch.cdist(R, R) + torch.diag(torch.full((R.shape[0],), float("inf"), device=R.device))
    return dist.min(1).values / (2 * R.norm(dim=1).clamp(min=1e-12))


def coupling_matrix(router_weight: torch.Tensor, gate_proj: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """M [E, E], M_ij = ||W_g^j (R_i * noise_i)||: `gate_proj` [E, I, H], `noise` [E, H] (1 = none)."""
    proxies = router_weight.float() if noise is None else router_weight.float() * noise
    return torch.einsum("jmh,ih->ijm", gate_proj.float(), proxies).norm(dim=-1)


def erc_loss(router_weight: torch.Tensor, gate_proj: torch.Tensor, alpha: float = 1.0,
             generator: torch.Generator | None = None, perturb: bool = True) -> torch.Tensor:
    """L for one layer: `router_weight` [E, H], `gate_proj` [E, I, H]; `perturb=False` uses the rows as they
    are (the hand-worked tests). Gradients reach both the router and the experts' gate projections."""
    E = router_weight.shape[0]
    if E < 2:
        return router_weight.sum() * 0.0
    noise = None
    if perturb:
        eps = proxy_noise_bounds(router_weight)
        u = torch.rand(router_weight.shape, generator=generator, dtype=torch.float32).to(router_weight.device)
        noise = 1 + eps[:, None] * (2 * u - 1)
    M = coupling_matrix(router_weight, gate_proj, noise)
    own = torch.diagonal(M)
    off = 1 - torch.eye(E, device=M.device)
    return ((torch.relu(M - alpha * own[:, None]) + torch.relu(M.T - alpha * own[:, None])) * off).sum() / E ** 2


def expert_gate_proj(experts) -> torch.Tensor:
    """W_g [E, I, H] of a transformers-5 fused experts module: the gate half of `gate_up_proj`
    ([E, 2I, H], gate rows first, as the experts' forward chunks it)."""
    gate_up = experts.gate_up_proj
    return gate_up[:, : gate_up.shape[1] // 2]
