"""Knapsack RL (arXiv 2509.25849): per-prompt rollout counts chosen to maximise the expected learning
value under a total rollout budget.

Value(N, p) = P(non-zero gradient) * InfoGain = (1 - p^N - (1-p)^N) * p (1-p)^2, with p the prompt's
success rate (its latest rollouts). The allocation is an exact multiple-choice knapsack: each prompt
takes one count N_i in [N_low, N_up], cost N_i, sum N_i <= N_total, maximising sum Value(N_i, p_i).
Dynamic programming over the budget: O(M * N_total * (N_up - N_low + 1)).
Prompts with p in {0, 1} (value 0 at any N) get N_low; prompts never seen use `prior` for p.
"""

from __future__ import annotations


def p_nonzero_gradient(n: int, p: float) -> float:
    """P(a group of n binary rollouts has both outcomes)."""
    return 1.0 - p**n - (1.0 - p) ** n


def rollout_value(n: int, p: float) -> float:
    return p_nonzero_gradient(n, p) * p * (1.0 - p) ** 2


def allocate(rates: list[float], total: int, n_low: int, n_up: int) -> list[int]:
    """Exact knapsack allocation; ties keep the lexicographically smallest counts (deterministic).

    Raises if even N_low each exceeds the total. Leftover budget beyond what adds value is unspent."""
    m = len(rates)
    if m * n_low > total:
        raise ValueError(f"rollout budget {total} cannot give {m} prompts at least {n_low} rollouts each")
    if n_up < n_low:
        raise ValueError("n_up must be >= n_low")
    budget = min(total, m * n_up) - m * n_low  # extra rollouts above the floor
    NEG = float("-inf")
    # best[j][b]: max value of prompts j.. using b extra rollouts; choice[j][b]: extra given to prompt j
    best = [[0.0] * (budget + 1) for _ in range(m + 1)]
    choice = [[0] * (budget + 1) for _ in range(m)]
    for j in range(m - 1, -1, -1):
        vals = [rollout_value(n_low + e, rates[j]) for e in range(n_up - n_low + 1)]
        for b in range(budget + 1):
            top, arg = NEG, 0
            for e in range(min(b, n_up - n_low) + 1):
                v = vals[e] + best[j + 1][b - e]
                if v > top + 1e-15:
                    top, arg = v, e
            best[j][b], choice[j][b] = top, arg
    out, b = [], budget
    for j in range(m):
        e = choice[j][b]
        out.append(n_low + e)
        b -= e
    return out
