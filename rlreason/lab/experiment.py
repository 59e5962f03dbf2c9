"""One measurement: each arm (an algo config: an estimator with its loss settings) at each group size G,
on K subsamples of the frozen pool.

A subsample is a training batch as the learner would see it: `batch_prompts` prompts drawn from the
pool's N, and G of each prompt's M responses. Its gradient is sum c * J (`coefficients.py`, the
projected token gradients J of `token_grads.py`). References, per arm: the arm's own gradient on the
whole pool (all N prompts, all M responses each: the direction a huge sample gives), and GRPO's on the
whole pool. Subsamples are drawn with one seeded generator per (arm, G), the same for every arm, so arms
are compared on the same batches.
"""

from __future__ import annotations

import time

import torch

from rlreason.algos.advantages import resolve_estimator
from rlreason.batch import RolloutBatch
from rlreason.lab.coefficients import batch_gradient, importance_weights, surrogate_coefficients
from rlreason.lab.pool import Pool
from rlreason.lab.stats import effective_sample_fraction, gradient_stats, zero_advantage_fractions


def pool_gradient(pool: Pool, J: torch.Tensor, algo_cfg, norm_len: int,
                  idx: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, RolloutBatch]:
    """The arm's projected gradient on the pool rows `idx` (all rows when None), its coefficients, and the
    rows as a batch."""
    idx = torch.arange(pool.batch.size) if idx is None else idx
    sub = pool.batch.select(idx)
    # only what this estimator reads: a batch's slice of the vocabulary log-probs is [n, T, V] (GBs on SmolLM2)
    needs = {"entropy", *getattr(resolve_estimator(algo_cfg.estimator), "needs", ())}
    tensors = {k: v[idx] for k, v in pool.learner_tensors.items() if k in needs}
    c = surrogate_coefficients(sub, algo_cfg, pool.logprobs[idx], norm_len, 0.0, tensors)
    return batch_gradient(c, J[idx]), c, sub


def subsample(pool: Pool, batch_prompts: int, G: int, gen: torch.Generator) -> torch.Tensor:
    """Row indices: `batch_prompts` prompts without replacement, G of each one's responses without replacement."""
    prompts = torch.randperm(pool.num_prompts, generator=gen)[:batch_prompts]
    rows = [k * pool.per_prompt + torch.randperm(pool.per_prompt, generator=gen)[:G] for k in prompts.tolist()]
    return torch.cat(rows)


def measure(pool: Pool, J: torch.Tensor, arms: dict, group_sizes: list[int], batch_prompts: int, subsamples: int, seed: int,
            norm_len: int, grpo_cfg, progress=None) -> list[dict]:
    """One row per (arm, G): variance, bias, cosines, SNR, zero-signal shares, the importance weights'
    effective sample fraction and seconds per gradient."""
    grpo_full, _, _ = pool_gradient(pool, J, grpo_cfg, norm_len)
    rows, done, total = [], 0, len(arms) * len(group_sizes)
    for name, algo_cfg in arms.items():
        full, _, _ = pool_gradient(pool, J, algo_cfg, norm_len)
        for G in group_sizes:
            gen = torch.Generator().manual_seed(seed * 7919 + G)
            grads, zeros, ess = [], [], []
            t0 = time.perf_counter()
            for _ in range(subsamples):
                idx = subsample(pool, batch_prompts, G, gen)
                g, c, sub = pool_gradient(pool, J, algo_cfg, norm_len, idx)
                grads.append(g)
                zeros.append(zero_advantage_fractions(c, sub.response_mask, sub.group_index))
                ess.append(effective_sample_fraction(importance_weights(sub, algo_cfg, pool.logprobs[idx]), sub.response_mask))
            seconds = (time.perf_counter() - t0) / subsamples
            g = torch.stack(grads)
            own = gradient_stats(g, full)
            vs_grpo = gradient_stats(g, grpo_full)
            rows.append({
                "arm": name, "G": G, "variance": own["variance"], "bias_norm": own["bias_norm"], "bias_noise": own["bias_noise"],
                "cosine_to_own_full": own["cosine_per_batch"], "cosine_mean_to_own_full": own["cosine_of_mean"],
                "cosine_to_grpo_full": vs_grpo["cosine_per_batch"], "snr": own["snr"], "mean_norm": own["mean_norm"],
                "full_norm": float(full.norm()), "relative_bias": own["bias_norm"] / max(float(full.norm()), 1e-30),
                "zero_group_frac": sum(z["zero_group_frac"] for z in zeros) / len(zeros),
                "zero_token_frac": sum(z["zero_token_frac"] for z in zeros) / len(zeros),
                "ess_frac": sum(ess) / len(ess),
                "seconds_per_gradient": seconds,
            })
            done += 1
            if progress is not None:
                progress(done, total)
    return rows
