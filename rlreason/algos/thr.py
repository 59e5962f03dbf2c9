"""THR (reconstructed): Token Hidden Reward reweighting of GRPO advantages.

Deng et al., arXiv 2510.03669; no code was found and the THR method text could not be read. This
follows docs/algorithms.md, "THR": NTHR's exact score (arXiv 2505.18830) generalised
to all tokens. Name in results: "THR (reconstructed)".

Per completion token, from the old policy (no gradient): h = final-layer hidden state, q = the
next-token distribution (at the sampling temperature) sliced to V* (the token ids that occur in
the group, not renormalised), g = e_o - q. With Pos = the group's correct responses:

    M        = sum_{i in Pos, k} g_{i,k} h_{i,k}^T                  (|V*| x d, fp32)
    THR_{j,k} = A_j * g_{j,k}^T M h_{j,k}

which equals A_j * sum_{i in Pos, k} <g_{i,k}, g_{j,k}> <h_{i,k}, h_{j,k}> without the double sum.
Dominant set Dm = {|THR| > tau}, tau = tau_beta * min_{i in Pos} mean_k |THR_{i,k}| (the NTHR
threshold's form applied to |THR| [I]; tau_beta = 0 puts every token with THR != 0 in Dm).
Reweighting: A'_{j,k} = A_j * (1 + p * sign(THR_{j,k})) on Dm, A_j elsewhere (or 0 elsewhere with
`only_dominant`). p > 0 favours exploitation, p < 0 exploration; p = 0 is exactly GRPO. Only mixed
groups (0 < #correct < G) are reweighted; others keep their GRPO advantages.
"""

from __future__ import annotations

import torch


def thr_scores(
    hidden: torch.Tensor,
    probs: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    positive: torch.Tensor,
) -> torch.Tensor:
    """g^T M h per token [G, T] for one group (without the A_j factor).

    hidden [G, T, d]; probs [G, T, V'] the old policy's next-token probabilities on V*; targets
    [G, T] indices of the sampled tokens into V*; mask [G, T]; positive [G] bool (Pos)."""
    h = hidden.to(torch.float32) * mask[..., None]
    g = -probs.to(torch.float32)
    g.scatter_add_(-1, targets[..., None], torch.ones_like(targets[..., None], dtype=torch.float32))
    g = g * mask[..., None]
    pos = positive.to(torch.float32)[:, None, None]
    M = torch.einsum("gtv,gtd->vd", g * pos, h)
    return torch.einsum("gtv,vd,gtd->gt", g, M, h)


def thr_explicit(hidden, probs, targets, mask, positive) -> torch.Tensor:
    """The same score by the explicit double sum over (i in Pos, k) (for tests)."""
    G, T, _ = hidden.shape
    g = -probs.to(torch.float64).clone()
    for a in range(G):
        for t in range(T):
            g[a, t, targets[a, t]] += 1.0
    h = hidden.to(torch.float64)
    out = torch.zeros(G, T, dtype=torch.float64)
    for j in range(G):
        for k in range(T):
            if not mask[j, k]:
                continue
            s = 0.0
            for i in range(G):
                if not positive[i]:
                    continue
                for kk in range(T):
                    if mask[i, kk]:
                        s += float(g[i, kk] @ g[j, k]) * float(h[i, kk] @ h[j, k])
            out[j, k] = s
    return out


def thr_reweight(
    adv: torch.Tensor, thr: torch.Tensor, mask: torch.Tensor, positive: torch.Tensor, p: float,
    tau_beta: float = 1.0, only_dominant: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A' [G, T] from per-sample advantages adv [G] and THR values [G, T]; also the dominant set."""
    mask = mask.bool()
    base = adv[:, None].expand_as(thr).to(torch.float32) * mask
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.numel():
        return base, torch.zeros_like(mask)
    mag = thr.abs() * mask
    per_seq = mag.sum(-1) / mask.sum(-1).clamp(min=1)
    tau = tau_beta * float(per_seq[positive].min())
    dominant = mask & (thr.abs() > tau)
    factor = torch.where(dominant, 1.0 + p * torch.sign(thr), torch.zeros_like(thr) if only_dominant else torch.ones_like(thr))
    return base * factor, dominant


def thr_advantages(
    adv: torch.Tensor,
    hidden: torch.Tensor,
    vocab_logprobs: torch.Tensor,
    response_ids: torch.Tensor,
    mask: torch.Tensor,
    correct: torch.Tensor,
    group_index: torch.Tensor,
    p: float,
    tau_beta: float = 1.0,
    only_dominant: bool = False,
) -> tuple[torch.Tensor, dict]:
    """Batch wrapper: per-token advantages [B, T] and metrics. vocab_logprobs [B, T, V] are the old
    policy's log-probabilities at the sampling temperature."""
    out = adv[:, None] * mask.to(torch.float32)
    n_dom, n_tok, n_up = 0, 0, 0
    for g in torch.unique(group_index):
        rows = torch.nonzero(group_index == g).flatten()
        pos = correct[rows] > 0
        if p == 0 or int(pos.sum()) in (0, rows.numel()):
            continue
        m = mask[rows].bool()
        vstar = torch.unique(response_ids[rows][m])
        lookup = torch.full((vocab_logprobs.shape[-1],), 0, dtype=torch.long, device=vstar.device)
        lookup[vstar] = torch.arange(vstar.numel(), device=vstar.device)
        probs = vocab_logprobs[rows][..., vstar].float().exp()
        targets = lookup[response_ids[rows]] * m
        thr = adv[rows][:, None] * thr_scores(hidden[rows], probs, targets, m, pos)
        out[rows], dom = thr_reweight(adv[rows], thr, m, pos, p, tau_beta, only_dominant)
        n_dom += int(dom.sum())
        n_up += int((dom & (torch.sign(thr) * p > 0)).sum())
        n_tok += int(m.sum())
    return out, {"thr/dominant_frac": n_dom / max(n_tok, 1), "thr/amplified_frac": n_up / max(n_tok, 1)}
