"""Group filtering by pass rate: DAPO's dynamic sampling and balanced online difficulty filtering.

One mechanism for both. A group (the G responses of one prompt) is kept iff its pass rate
p = mean_i correct_i lies in the band [low, high] (inclusive) or (low, high) (exclusive).
DAPO (arXiv 2503.14476) is the exclusive band (0, 1): groups that are all right or all wrong carry
no GRPO gradient and are dropped. Balanced filtering (Bae et al., arXiv 2504.03380) is an inclusive
band centred on 0.5, e.g. [0.25, 0.75]. The trainer refills the batch from new prompts so the step
keeps its size.
"""

from __future__ import annotations

import torch


def group_pass_rates(correct: torch.Tensor, group_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(group ids in first-appearance order, pass rate of each)."""
    ids = list(dict.fromkeys(group_index.tolist()))
    rates = torch.tensor([float((correct[group_index == g] > 0).double().mean()) for g in ids], dtype=torch.float64)
    return torch.tensor(ids, dtype=torch.long), rates


def keep_groups(correct: torch.Tensor, group_index: torch.Tensor, low: float, high: float, inclusive: bool) -> torch.Tensor:
    """Boolean [n_groups] over the groups in first-appearance order."""
    _, rates = group_pass_rates(correct, group_index)
    tol = 1e-9  # pass rates are k/G: a bound of 1/3 must match 1/3 whatever the rounding
    if inclusive:
        return (rates >= low - tol) & (rates <= high + tol)
    return (rates > low + tol) & (rates < high - tol)
