"""Held-out evaluation metrics: greedy accuracy, sampled pass@1 and pass@k, overall and per category.

From one greedy answer and n sampled answers per held-out problem (scores in [0, 1], 1 = correct):

    accuracy/eval              mean over problems of the greedy score
    accuracy/eval_sampled      mean over problems of the mean sampled score (pass@1 at the sampling temperature)
    accuracy/eval_pass_at_k    mean over problems of 1 - C(n - c, k) / C(n, k)  (Chen et al. 2021, unbiased; k = n: any correct)

and the same three under `.../<category>` for every category of the split. Problems weigh equally,
so each problem's n samples count as one observation: `eval/binomial_std*` is sqrt(p (1 - p) / N)
over the N problems, the noise to quote beside a difference (the samples of one problem are
correlated, so N, not N * n, is the honest count).
"""

from __future__ import annotations

import math
from collections import defaultdict


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n (c correct) is correct."""
    if not 0 < k <= n or not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 < k <= n and 0 <= c <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def binomial_std(p: float, n: int) -> float:
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n else float("nan")


def eval_metrics(categories: list[str], greedy: list[float], sampled: list[list[float]] | None, k: int | None = None) -> dict:
    """The metrics above for problems with `categories[i]`, greedy score `greedy[i]` and sampled scores
        `sampled[i]` (None: greedy only). For pass@k a sample counts as correct when its score is >= 0.5
    (correctness verifiers score 0 or 1); greedy and pass@1 average the scores themselves."""
    if len(categories) != len(greedy) or (sampled is not None and len(sampled) != len(greedy)):
        raise ValueError("one category, greedy score and list of samples per problem")
    per: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(categories):
        per[c].append(i)
    groups = [("", list(range(len(greedy))))] + ([(f"/{c}", idx) for c, idx in sorted(per.items())] if len(per) > 1 else [])
    kk = (k or len(sampled[0])) if sampled is not None else None
    out = {} if sampled is None else {"eval/k": kk}
    for suffix, idx in groups:
        acc = sum(greedy[i] for i in idx) / len(idx)
        out[f"accuracy/eval{suffix}"] = acc
        out[f"eval/binomial_std{suffix}"] = binomial_std(acc, len(idx))
        if sampled is None:
            continue
        p1 = sum(sum(sampled[i]) / len(sampled[i]) for i in idx) / len(idx)
        out[f"accuracy/eval_sampled{suffix}"] = p1
        out[f"eval/binomial_std_sampled{suffix}"] = binomial_std(p1, len(idx))
        out[f"accuracy/eval_pass_at_k{suffix}"] = sum(
            pass_at_k(len(sampled[i]), sum(s >= 0.5 for s in sampled[i]), kk) for i in idx) / len(idx)
    return out
