"""D3S: dynamic dual-level down-sampling (Wang et al., arXiv 2509.22115), reconstructed from
docs/algorithms.md, "D3S" (no code was found; [I] marks a reconstructed choice, each an option here).

Sample level: advantages are computed on the full groups first (never renormalised afterwards);
then a subset S of N samples maximising the population variance of A is kept. The optimum is the
top-k plus the bottom-(N-k) samples by A for some k (PODS, arXiv 2504.13818), found exactly by one
sort and a scan over k with prefix sums: O(n log n). Cross-group (over the whole batch) by
default; `per_group=True` is D3S-I (N scaled to each group's size).

Token level: among the tokens of S, keep the top K share ranked by |A| * H (H = the old policy's
full-vocabulary entropy at that position, no gradient [I]); the rest leave the loss, which is then
normalised over the kept tokens [I]. `token_scope="batch"` ranks over all tokens of S at once,
`"sequence"` keeps ceil(K * |o_i|) in each sequence [I]. The count is exactly ceil(K * n) (n =
tokens in scope), so at least one token whenever K > 0; under batch scope a low-scoring sequence
may lose all its tokens.

Schedule: with progress p = step / total_steps, [N, K] = (1-p) [N_init, K_init] + p [N_final, K_final];
N is a share of the batch here (rounded to a count), K a share of tokens (ceil).
"""

from __future__ import annotations

import math

import torch


def max_variance_subset(values: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (sorted ascending) of the n values whose population variance is largest.

    Ties between equal values are broken by index (stable sort), so the result is deterministic."""
    m = values.numel()
    if n >= m:
        return torch.arange(m)
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    v = values.to(torch.float64).flatten()
    order = torch.argsort(v, stable=True)  # ascending
    s = v[order]
    csum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s, 0)])
    csq = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(s * s, 0)])
    best_k, best_var = 0, -math.inf
    for k in range(n + 1):  # k largest + (n-k) smallest
        lo = n - k
        total = csum[lo] + (csum[m] - csum[m - k])
        total_sq = csq[lo] + (csq[m] - csq[m - k])
        var = float(total_sq / n - (total / n) ** 2)
        if var > best_var + 1e-12:
            best_k, best_var = k, var
    lo = n - best_k
    chosen = torch.cat([order[:lo], order[m - best_k:]])
    return torch.sort(chosen).values


def schedule(progress: float, init: float, final: float) -> float:
    p = min(max(progress, 0.0), 1.0)
    return (1.0 - p) * init + p * final


def select_samples(adv: torch.Tensor, group_index: torch.Tensor, share: float, per_group: bool = False) -> torch.Tensor:
    """Boolean [B]: the samples kept at the sample level, N = round(share * size)."""
    B = adv.numel()
    keep = torch.zeros(B, dtype=torch.bool)
    if not per_group:
        keep[max_variance_subset(adv, round(share * B))] = True
        return keep
    for g in torch.unique(group_index):
        rows = torch.nonzero(group_index == g).flatten()
        keep[rows[max_variance_subset(adv[rows], round(share * rows.numel()))]] = True
    return keep


def select_tokens(score: torch.Tensor, mask: torch.Tensor, share: float, scope: str = "batch") -> torch.Tensor:
    """Boolean [B, T]: the top `share` of masked tokens by `score`, ceil(share * n) of them."""
    mask = mask.bool()
    keep = torch.zeros_like(mask)
    s = score.to(torch.float64).masked_fill(~mask, -math.inf)
    if scope == "batch":
        total = int(mask.sum())
        k = min(total, math.ceil(share * total - 1e-9))
        if k > 0:
            flat = torch.argsort(s.flatten(), descending=True, stable=True)[:k]
            keep.view(-1)[flat] = True
    elif scope == "sequence":
        for b in range(mask.shape[0]):
            n = int(mask[b].sum())
            k = min(n, math.ceil(share * n - 1e-9))
            if k > 0:
                keep[b, torch.argsort(s[b], descending=True, stable=True)[:k]] = True
    else:
        raise ValueError(f"d3s token scope must be batch or sequence, not {scope!r}")
    return keep & mask


def d3s_masks(
    adv: torch.Tensor,
    token_adv: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    group_index: torch.Tensor,
    progress: float,
    n_init: float,
    n_final: float,
    k_init: float,
    k_final: float,
    per_group: bool = False,
    token_scope: str = "batch",
) -> tuple[torch.Tensor, dict]:
    """The loss mask [B, T] (kept samples x kept tokens) and the shares used, at this progress."""
    n_share = schedule(progress, n_init, n_final)
    k_share = schedule(progress, k_init, k_final)
    samples = select_samples(adv, group_index, n_share, per_group)
    sample_mask = mask.bool() & samples[:, None]
    tokens = select_tokens(token_adv.abs() * entropy, sample_mask, k_share, token_scope)
    info = {"d3s/sample_share": n_share, "d3s/token_share": k_share,
            "d3s/kept_samples": int(samples.sum()), "d3s/kept_tokens": int(tokens.sum())}
    return tokens, info
