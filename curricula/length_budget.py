"""Train Long, Think Short (arXiv 2508.08940): a token budget that tightens over training, and the
triangular length reward that pays most for using the budget exactly.

Schedules (B(t) >= 1 always):
- ``exponential``: B(t) = max(1, round(B0 * d^k)), k = floor(t / interval), d = (B_final / B0)^(1 / n)
  with n = number of decays and interval = total_steps / (n + 1) (the paper: 256 -> 87 over 600
  steps with n = 3 gives 256/179/125/87 at steps 0/150/300/450);
- ``linear``: equal drops from B0 to B_final over the same n + 1 stages;
- ``custom``: an explicit list of budgets, one per equal stage.

Length reward with L = B(t) (Rmax = 1):
    R_len(l) = l / L for 0 <= l <= L;  1 - (l - L) / L for L < l <= 2L;  0 for l > 2L.
"""

from __future__ import annotations

import math


def budget_schedule(step: int, total_steps: int, kind: str, start: int, final: int, decays: int,
                    custom: list[int] | None = None) -> int:
    """B at `step` (0-based; negative steps read as 0)."""
    step = max(step, 0)
    if kind == "custom":
        if not custom:
            raise ValueError("a custom budget schedule needs a non-empty list of budgets")
        stages = len(custom)
        stage = min(stages - 1, step * stages // max(total_steps, 1))
        return max(1, int(custom[stage]))
    interval = total_steps / (decays + 1)
    k = min(decays, int(math.floor(step / interval))) if interval > 0 else decays
    if kind == "exponential":
        d = (final / start) ** (1.0 / decays) if decays else 1.0
        return max(1, round(start * d**k))
    if kind == "linear":
        return max(1, round(start + (final - start) * k / decays)) if decays else start
    raise ValueError(f"unknown budget schedule {kind!r}; choose exponential, linear or custom")


def triangular_length_reward(length: int, budget: int, r_max: float = 1.0) -> float:
    if budget < 1:
        raise ValueError("the budget must be >= 1")
    if length <= budget:
        return r_max * length / budget
    if length <= 2 * budget:
        return r_max * (1.0 - (length - budget) / budget)
    return 0.0
