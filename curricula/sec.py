"""Self-Evolving Curriculum (SEC, arXiv 2505.14970): a non-stationary bandit over task categories.

Arms are categories (difficulty levels or task types). After a step, each sampled arm c gets the
reward r(c) = mean over the step's problems in c of mean_i |A_i| (absolute advantage: the learning
signal), and Q(c) <- alpha * r(c) + (1 - alpha) * Q(c) (TD(0); unsampled arms unchanged). The next
batch draws a category per slot from softmax(Q / tau), then a problem uniformly within it. For
binary rewards with std-normalised GRPO, mean |A| = 2 sqrt(p (1 - p)): 1 at p = 0.5, 0 at p in {0, 1}.
"""

from __future__ import annotations

import math


def softmax_probs(q: list[float], tau: float) -> list[float]:
    if tau <= 0:
        raise ValueError("SEC temperature must be > 0")
    top = max(q)
    w = [math.exp((v - top) / tau) for v in q]
    s = sum(w)
    return [x / s for x in w]


def td_update(q: list[float], rewards: dict[int, float], alpha: float) -> list[float]:
    return [alpha * rewards[c] + (1 - alpha) * v if c in rewards else v for c, v in enumerate(q)]
