"""Balanced routing by Sinkhorn iterations: BASE layers' balanced assignment (arXiv 2103.16716) as
Megatron routes with it, and Selective Sinkhorn Routing (SSR, arXiv 2511.08972: abstract read, the
details from secondary notes; specs/moe_routing_methods.md section 3).

Over one batch of T tokens, the entropic optimal transport plan between tokens and experts

    Pi = argmax <Pi, C> - xi <Pi, log Pi>   s.t.   Pi 1_E = 1_T   (each token one unit of mass)
                                                   Pi^T 1_T = (T/E) 1_E   (each expert the same load)

is Pi_te = u_t exp(C_te / xi) v_e, with u and v found by alternately scaling rows and columns
(`log_column_scaling`, in the log domain). Row scaling keeps each row's ranking, so a token's top-k under
Pi is topk(C_t / xi + log v): the plan routes like the native router plus a per-expert bias log v, the
bias that aux-loss-free balancing tracks online and Sinkhorn solves per batch.

- `ssr_route`: ids = topk(z), gates = softmax of z over the chosen ids, z = l / xi + log v with
  C = the router logits l (our choice; the cost SSR uses is not stated) and v detached (our choice:
  the gate's gradient is the native softmax's at a shifted point; unrolling the iterations is not
  offered). At a balanced batch v is constant and this is the native renormalised top-k.
- `megatron_route`: Megatron's "sinkhorn" router: the same ids (xi = 1), gates from the *unbalanced*
  router: softmax(l) at the ids for k > 1, sigmoid(l) for k = 1, not renormalised.

Batch routing is non-causal (a token's experts depend on the other tokens of the batch), so a
rollout engine can never route this way: the learner uses it on a step with probability `p`
(`selective_step`), deciding by a hash of (seed, step) so every rank and every pass of that step agree.
"""

from __future__ import annotations

import hashlib
import math

import torch


def log_column_scaling(z: torch.Tensor, tol: float = 1e-4, max_iter: int = 100) -> torch.Tensor:
    """log v [E] such that rows of exp(z + log v), each normalised to 1, sum per column to T/E.
    `z` [T, E] is C / xi. Iterates log u = -lse_e(z + log v), log v = log(T/E) - lse_t(z + log u) until
    the column sums are within `tol` (relative) of T/E, or `max_iter` rounds."""
    z = z.detach().double()
    T, E = z.shape
    log_v = torch.zeros(E, dtype=torch.float64, device=z.device)
    target = math.log(T / E)
    for _ in range(max_iter):
        log_u = -torch.logsumexp(z + log_v, dim=1)
        log_v = target - torch.logsumexp(z + log_u[:, None], dim=0)
        plan_cols = torch.logsumexp(z + log_v - torch.logsumexp(z + log_v, dim=1, keepdim=True), dim=0)
        if float((plan_cols.exp() / (T / E) - 1).abs().max()) < tol:
            break
    return (log_v - log_v.mean()).to(torch.float32)


def transport_plan(logits: torch.Tensor, xi: float = 1.0, tol: float = 1e-4, max_iter: int = 100) -> torch.Tensor:
    """Pi [T, E]: rows sum to 1, columns to T/E."""
    z = logits.float() / xi
    return torch.softmax(z + log_column_scaling(z, tol, max_iter), dim=-1)


def ssr_route(logits: torch.Tensor, k: int, xi: float = 1.0, tol: float = 1e-4, max_iter: int = 100):
    """(ids [T, k], gates [T, k]) from the balanced plan: gates renormalised over the chosen ids."""
    z = logits.float() / xi
    z = z + log_column_scaling(z, tol, max_iter)
    ids = torch.topk(z, k, dim=-1).indices
    return ids, torch.softmax(z.gather(-1, ids), dim=-1)


def megatron_route(logits: torch.Tensor, k: int, tol: float = 1e-4, max_iter: int = 100):
    """(ids, gates): the plan's top-k with the native router's unrenormalised probabilities."""
    z = logits.float()
    ids = torch.topk(z + log_column_scaling(z, tol, max_iter), k, dim=-1).indices
    gates = torch.sigmoid(z.gather(-1, ids)) if k == 1 else torch.softmax(z, dim=-1).gather(-1, ids)
    return ids, gates


def selective_step(seed: int, step: int, p: float) -> bool:
    """Whether optimizer step `step` routes by Sinkhorn: u01(hash(seed, step)) < p, the same on every
    rank and in every pass (old log-probs, updates, recomputation) of the step."""
    if p <= 0:
        return False
    digest = hashlib.sha256(f"sinkhorn:{seed}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < p
