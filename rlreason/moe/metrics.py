"""Router health metrics: pure functions on recorded routes ([N, L, k] ids) and router logits ([L, N, E]).

All return plain floats (or per-layer lists) for `moe/*` metrics; see specs/moe_router.md section 6.
"""

from __future__ import annotations

import math

import torch


def _valid_rows(a: torch.Tensor, b: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """[N, L] bool: the (token, layer) pairs where every compared route is recorded and the token counts."""
    valid = (a >= 0).all(-1)
    if b is not None:
        valid &= (b >= 0).all(-1)
    if mask is not None:
        valid &= mask.bool()[:, None]
    return valid


def route_agreement(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    """Compare two routings [N, L, k] (top-k sets, order ignored) on the valid (token, layer) pairs.

    Returns per-layer `mismatch_rate` (share of pairs whose sets differ) and `topk_overlap`
    (|A & B| / k), plus over tokens `token_any_mismatch` (share of tokens with a differing set in
    at least one layer) and `mismatched_layers_per_token`. Layers with no valid pair give nan."""
    a, b = a.long(), b.long()
    k = a.shape[-1]
    valid = _valid_rows(a, b, mask)
    shared = (a[..., :, None] == b[..., None, :]).any(-1).sum(-1).float()  # [N, L]
    differ = (shared < k) & valid
    n = valid.sum(0).float()
    nan = torch.full_like(n, float("nan"))
    mismatch = torch.where(n > 0, differ.sum(0) / n.clamp(min=1), nan)
    overlap = torch.where(n > 0, (shared / k * valid).sum(0) / n.clamp(min=1), nan)
    tokens = valid.any(-1)
    n_tok = int(tokens.sum())
    return {
        "mismatch_rate": mismatch.tolist(),
        "topk_overlap": overlap.tolist(),
        "token_any_mismatch": float(differ.any(-1)[tokens].float().mean()) if n_tok else float("nan"),
        "mismatched_layers_per_token": float(differ.sum(-1)[tokens].float().mean()) if n_tok else float("nan"),
    }


def expert_load(indices: torch.Tensor, num_experts: int, mask: torch.Tensor | None = None) -> dict:
    """Load per layer from ids [N, L, k]: load_i = routed slots / (T * k). Returns per-layer
    `max_over_mean` (E * max load; 1 = balanced, E/k when k experts take every token), `maxvio`
    ((max - mean) / mean), `entropy` (H(load) / log E; 1 = balanced) and `dead_experts` (no slot)."""
    from rlreason.moe.regularizers import expert_counts

    counts = expert_counts(indices, num_experts, mask)  # [L, E]
    load = counts / counts.sum(-1, keepdim=True).clamp(min=1e-12)
    mean = 1.0 / num_experts
    ent = -(load * load.clamp(min=1e-12).log()).sum(-1) / math.log(num_experts)
    return {
        "max_over_mean": (load.max(-1).values / mean).tolist(),
        "maxvio": ((load.max(-1).values - mean) / mean).tolist(),
        "entropy": ent.tolist(),
        "dead_experts": (counts == 0).sum(-1).tolist(),
    }


def category_specialisation(counts: torch.Tensor) -> dict:
    """How much a layer's expert choice tells about the input's category, from counts [C, E] of
    routed slots (tokens x k) of each category c at each expert e, with p(c, e) = n_ce / N:

        mutual_information = sum_ce p(c, e) log2(p(c, e) / (p(c) p(e)))   bits; 0 when every category
                             routes alike, log2(min(C, E)) at most (each category its own experts)
        mean_tv            = sum_c p(c) * 1/2 sum_e |p(e | c) - p(e)|      the share of a category's
                             slots that would have to move for it to route like the whole

    Returns both and the per-category loads p(e | c)."""
    n = counts.double()
    joint = n / n.sum().clamp(min=1e-12)
    p_c, p_e = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    mi = (joint[nz] * (joint[nz] / (p_c * p_e).expand_as(joint)[nz]).log2()).sum()
    cond = joint / p_c.clamp(min=1e-12)
    tv = 0.5 * (cond - p_e).abs().sum(1)
    return {"mutual_information": float(mi), "mean_tv": float((p_c.squeeze(1) * tv).sum()), "load_by_category": cond.tolist()}


def router_stats(logits: torch.Tensor, top_k: int, mask: torch.Tensor | None = None, tie_eps: float = 1e-3) -> dict:
    """Per-layer router statistics from logits [L, N, E]: mean logsumexp^2 (`lse2`), max |logit|,
    softmax entropy, top-1 probability, and `near_tie_frac`: the share of tokens whose k-th and
    (k+1)-th probabilities differ by less than `tie_eps` (a tiny numeric change can flip those)."""
    x = logits.detach().float()
    L, N, E = x.shape
    m = torch.ones(N, device=x.device) if mask is None else mask.float()
    denom = m.sum().clamp(min=1)

    def mean(v):  # [L, N] -> [L]
        return (v * m).sum(-1) / denom

    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    top = torch.topk(p, min(top_k + 1, E), dim=-1).values
    tie = (top[..., top_k - 1] - top[..., top_k] < tie_eps).float() if top_k < E else torch.zeros(L, N, device=x.device)
    masked_abs = x.abs().amax(-1) * m
    return {
        "lse2": mean(torch.logsumexp(x, -1).pow(2)).tolist(),
        "max_abs_logit": masked_abs.amax(-1).tolist(),
        "entropy": mean(-(p * logp).sum(-1)).tolist(),
        "top1_prob": mean(top[..., 0]).tolist(),
        "near_tie_frac": mean(tie).tolist(),
    }


def logprob_gap(train_logp: torch.Tensor, sample_logp: torch.Tensor, mask: torch.Tensor) -> dict:
    """Train-vs-rollout logprob gap on sampled tokens (rho = pi_train / pi_sample): `chi2` = E[rho^2] - 1,
    `max_abs_log_ratio`, `frac_gt10` = F(10), the share of tokens with max(rho, 1/rho) > 10."""
    m = mask.bool()
    if not bool(m.any()):
        return {"chi2": 0.0, "max_abs_log_ratio": 0.0, "frac_gt10": 0.0}
    log_rho = (train_logp - sample_logp).float()[m]
    return {
        "chi2": float(torch.exp(2 * log_rho).mean() - 1),
        "max_abs_log_ratio": float(log_rho.abs().max()),
        "frac_gt10": float((log_rho.abs() > math.log(10.0)).float().mean()),
    }


def layer_mean(per_layer: list[float]) -> float:
    """Mean over the layers that have a value (nan when none has)."""
    values = [v for v in per_layer if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def summarize(prefix: str, per_layer: list[float], out: dict, with_layers: bool = False) -> None:
    """Add `<prefix>` (mean over layers, nan-skipping) and `<prefix>_max` to `out`; per layer as
    `moe/layer<l>/<name>` when `with_layers` (prefix 'moe/<name>')."""
    values = [v for v in per_layer if not math.isnan(v)]
    if not values:
        return
    out[prefix] = layer_mean(values)
    out[prefix + "_max"] = max(values)
    if with_layers:
        name = prefix.split("/", 1)[1]
        for layer, v in enumerate(per_layer):
            if not math.isnan(v):
                out[f"moe/layer{layer}/{name}"] = v
