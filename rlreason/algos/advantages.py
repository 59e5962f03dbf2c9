"""Group-relative advantages (GRPO, DeepSeekMath arXiv 2402.03300).

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        (scale_by_std=True)
    A_i =  r_i - mean(r_group)                                (scale_by_std=False, Dr.GRPO)

and every response token of sample i gets A_i. ``std`` uses ``ddof`` (1 = unbiased, as TRL and verl;
0 = population). Edge cases, chosen here:
- a group whose rewards are all equal (std = 0) gets A = 0, not (r - mu)/eps;
- a group of one response (G = 1) gets A = 0 (verl returns the raw reward there; we do not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_index: torch.Tensor,
    std_ddof: int = 1,
    eps: float = 1e-6,
    scale_by_std: bool = True,
) -> torch.Tensor:
    """Per-sample advantages [B] from rewards [B] and integer group ids [B]."""
    rewards = rewards.to(torch.float64)
    groups, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(groups), dtype=torch.float64, device=rewards.device).index_add_(0, inverse, rewards)
    mean = sums / counts
    centered = rewards - mean[inverse]
    sq = torch.zeros(len(groups), dtype=torch.float64, device=rewards.device).index_add_(0, inverse, centered**2)
    denom = (counts - std_ddof).clamp(min=1)
    std = (sq / denom).sqrt()
    degenerate = (counts < 2) | (std <= 0)
    if scale_by_std:
        adv = centered / (std[inverse] + eps)
    else:
        adv = centered
    adv = torch.where(degenerate[inverse], torch.zeros_like(adv), adv)
    return adv.to(torch.float32)


@dataclass
class Estimate:
    """What an estimator may return instead of a bare advantages tensor [B, T].

    loss_mask: tokens that enter the loss and its normaliser (default: the response mask);
    token_weights: per-token multipliers of the policy-gradient term that leave the normaliser
    alone (TW-GRPO); metrics: logged with the step."""

    advantages: torch.Tensor
    loss_mask: torch.Tensor | None = None
    token_weights: torch.Tensor | None = None
    metrics: dict = field(default_factory=dict)


def as_estimate(out) -> Estimate:
    return out if isinstance(out, Estimate) else Estimate(out)


def _broadcast(adv: torch.Tensor, batch) -> torch.Tensor:
    return adv[:, None] * batch.response_mask.to(adv.dtype)


def _grpo_sample(batch, cfg) -> torch.Tensor:
    return group_advantages(batch.rewards, batch.group_index, cfg.std_ddof, cfg.adv_eps, cfg.scale_by_std)


def rloo_advantages(rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """RLOO (Ahmadian et al., arXiv 2402.14740): A_i = r_i - mean_{j != i} r_j = G/(G-1) (r_i - mu);
    a group of one gets 0."""
    rewards = rewards.to(torch.float64)
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, rewards)
    n = counts[inverse].to(torch.float64)
    loo = (sums[inverse] - rewards) / (n - 1).clamp(min=1)
    return torch.where(n > 1, rewards - loo, torch.zeros_like(rewards)).to(torch.float32)


def grpo(batch, cfg, learner_tensors: dict) -> torch.Tensor:
    """GRPO: the group advantage (r - mu) / (sigma + eps) broadcast over response tokens."""
    return _broadcast(_grpo_sample(batch, cfg), batch)


def drgrpo(batch, cfg, learner_tensors: dict) -> torch.Tensor:
    """Dr.GRPO (arXiv 2503.20783): r - mu, no division by the group std (scale_by_std ignored)."""
    return _broadcast(group_advantages(batch.rewards, batch.group_index, cfg.std_ddof, cfg.adv_eps, False), batch)


def rloo(batch, cfg, learner_tensors: dict) -> torch.Tensor:
    return _broadcast(rloo_advantages(batch.rewards, batch.group_index), batch)


def tempo(batch, cfg, learner_tensors: dict) -> torch.Tensor:
    """TEMPO (reconstructed, see algos/tempo.py): GRPO plus branch-gated prefix-tree TD."""
    from rlreason.algos.tempo import tempo_advantages

    return tempo_advantages(batch.response_ids.cpu(), batch.response_mask.cpu(), batch.rewards.cpu(), batch.group_index.cpu(),
                            cfg.std_ddof, cfg.adv_eps, cfg.tempo.td_weight).to(batch.response_ids.device)


def thr(batch, cfg, learner_tensors: dict) -> Estimate:
    """THR (reconstructed, see algos/thr.py): GRPO advantages reweighted by token hidden reward."""
    from rlreason.algos.thr import thr_advantages

    t = cfg.thr
    adv, metrics = thr_advantages(
        _grpo_sample(batch, cfg), learner_tensors["hidden"], learner_tensors["vocab_logprobs"], batch.response_ids,
        batch.response_mask, batch.correct if batch.correct is not None else batch.rewards, batch.group_index,
        t.p, t.tau_beta, t.only_dominant,
    )
    return Estimate(adv, metrics=metrics)


def d3s(batch, cfg, learner_tensors: dict) -> Estimate:
    """D3S (reconstructed, see algos/d3s.py): GRPO advantages on a max-variance subset of samples and
    the top |A|*H share of their tokens, relaxed linearly over training."""
    from rlreason.algos.d3s import d3s_masks

    c = cfg.d3s
    adv = _grpo_sample(batch, cfg)
    token_adv = _broadcast(adv, batch)
    keep, metrics = d3s_masks(adv, token_adv, learner_tensors["entropy"], batch.response_mask, batch.group_index,
                              learner_tensors.get("progress", 0.0), c.n_init, c.n_final, c.k_init, c.k_final, c.per_group,
                              c.token_scope)
    return Estimate(token_adv, loss_mask=keep.to(torch.float32), metrics=metrics)


def tw_grpo(batch, cfg, learner_tensors: dict) -> Estimate:
    """TW-GRPO (see algos/token_weighting.py): GRPO advantages, per-position weights in [1, alpha]."""
    from rlreason.algos.token_weighting import tw_token_weights

    w = tw_token_weights(learner_tensors["vocab_logprobs"], batch.response_mask, batch.group_index, cfg.tw.alpha)
    metrics = {"tw/weight_mean": float(w[batch.response_mask.bool()].mean())}
    return Estimate(grpo(batch, cfg, learner_tensors), token_weights=w, metrics=metrics)


ESTIMATORS: dict[str, Callable] = {}


def register_estimator(name: str, needs: frozenset = frozenset()) -> Callable:
    """Register `fn(batch, algo_cfg, learner_tensors) -> Tensor | Estimate` under `name`.

    needs: learner tensors to compute besides old_logprobs, entropy and progress:
    "hidden" (final-layer hidden states [B, T, d]) and "vocab_logprobs" ([B, T, V], memory-heavy)."""

    def deco(fn):
        fn.needs = frozenset(needs)
        ESTIMATORS[name] = fn
        return fn

    return deco


for _name, _fn, _needs in (
    ("grpo", grpo, ()), ("drgrpo", drgrpo, ()), ("rloo", rloo, ()), ("tempo", tempo, ()),
    ("thr", thr, ("hidden", "vocab_logprobs")), ("d3s", d3s, ()), ("tw_grpo", tw_grpo, ("vocab_logprobs",)),
):
    register_estimator(_name, frozenset(_needs))(_fn)


def resolve_estimator(name: str) -> Callable:
    """A registered name, or `package.module:function` from the user's own code (its optional
    `needs` attribute is honoured)."""
    if name in ESTIMATORS:
        return ESTIMATORS[name]
    if ":" in name:
        import importlib

        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"algo.estimator={name!r}: cannot import it ({e})") from None
        if not callable(fn):
            raise ValueError(f"algo.estimator={name!r} is not callable")
        if not hasattr(fn, "needs"):
            fn.needs = frozenset()
        return fn
    raise ValueError(f"unknown estimator {name!r}; choose one of {sorted(ESTIMATORS)} or give module:function")
