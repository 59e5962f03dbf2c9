"""TEMPO / Prefix-to-Tree: GRPO plus branch-gated TD over the prefix tree of each group's responses.

Tran, Yao, Yu, arXiv 2509.18314. No official code exists and the method section could not be read,
so this is the reconstruction in docs/algorithms.md, "TEMPO" (points marked [I] there
are options here):

1. Per group, a trie over the exact response token ids (padding never enters). The root is the
   empty response prefix. A response that ends there (EOS or truncation) adds an END child to its
   last node, so the node branches when another response continues past it.
2. r~_j = (r_j - mu) / sigma, the group-normalised reward (ddof and eps as GRPO's).
3. V(s) = mean of r~_j over the responses below node s; V(root) = 0.
4. For token t of response i, delta = V(s_{t+1}) - V(s_t), gamma = 1, no intermediate reward.
5. Gate b = 1 iff s_t has >= 2 distinct children (END counts).
6. A_{i,t} = r~_i + td_weight * b * delta  (td_weight default 1 [I]).

Cost: one pass over the group's tokens with a dict keyed by (node, token): O(G*T) time and memory,
no pairwise comparison of responses. A group with sigma = 0 (or a single response) gets A = 0.
"""

from __future__ import annotations

import torch

from rlreason.algos.group import group_advantages

END = -1  # the END child's key: no real token id is negative


def tempo_group(responses: list[list[int]], rewards_norm: list[float], td_weight: float = 1.0) -> list[list[float]]:
    """Per-token advantages of one group: `responses` are token-id lists (no padding), `rewards_norm`
    the normalised rewards r~. Pure python; the batch wrapper handles tensors."""
    children: dict[tuple[int, int], int] = {}  # (node, token) -> child node
    n_children = [0]
    value_sum = [0.0]
    count = [0]
    paths = []
    for ids, r in zip(responses, rewards_norm):
        node = 0
        value_sum[0] += r
        count[0] += 1
        path = [0]
        for tok in list(ids) + [END]:
            key = (node, tok)
            child = children.get(key)
            if child is None:
                child = len(n_children)
                children[key] = child
                n_children.append(0)
                value_sum.append(0.0)
                count.append(0)
                n_children[node] += 1
            node = child
            value_sum[node] += r
            count[node] += 1
            path.append(node)
        paths.append(path)
    value = [s / c for s, c in zip(value_sum, count)]
    value[0] = 0.0  # V(root) = mean of normalised rewards = 0 by construction; pin it exactly
    out = []
    for ids, r, path in zip(responses, rewards_norm, paths):
        adv = []
        for t in range(len(ids)):
            s, s_next = path[t], path[t + 1]
            gate = n_children[s] >= 2
            adv.append(r + td_weight * (value[s_next] - value[s]) if gate else r)
        out.append(adv)
    return out


def tempo_advantages(
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    std_ddof: int = 1,
    eps: float = 1e-6,
    td_weight: float = 1.0,
) -> torch.Tensor:
    """Per-token advantages [B, T] for a batch (responses are right-padded; mask marks real tokens)."""
    norm = group_advantages(rewards, group_index, std_ddof, eps, scale_by_std=True).tolist()
    out = torch.zeros(response_ids.shape, dtype=torch.float32)
    lengths = response_mask.sum(-1).tolist()
    ids = response_ids.tolist()
    groups: dict[int, list[int]] = {}
    for b, g in enumerate(group_index.tolist()):
        groups.setdefault(g, []).append(b)
    for rows in groups.values():
        if all(norm[b] == 0.0 for b in rows):  # sigma = 0 or G = 1: no signal, A = 0
            continue
        adv = tempo_group([ids[b][: lengths[b]] for b in rows], [norm[b] for b in rows], td_weight)
        for b, a in zip(rows, adv):
            if a:
                out[b, : len(a)] = torch.tensor(a, dtype=torch.float32)
    return out.to(response_ids.device)
