"""Advantage estimators: each a function `(batch, algo_cfg, learner_tensors) -> advantages [B, T] | Estimate`,
registered by name with `@register_estimator` (`algo.estimator=<name>`, or `module:function` for user code).

The group baselines they build on are in `group.py`; the reconstructed methods in their own files
(`tempo.py`, `thr.py`, `d3s.py`, `token_weighting.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from rlreason.algos.d3s import d3s_masks
from rlreason.algos.group import group_advantages, rloo_advantages
from rlreason.algos.tempo import tempo_advantages
from rlreason.algos.thr import thr_advantages
from rlreason.algos.token_weighting import tw_token_weights
from rlreason.registry import Registry


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


class EstimatorNotFound(ValueError):
    """`algo.estimator` names no registered estimator, entry point or importable function."""


ESTIMATORS = Registry("estimator", "algo.estimator", error=EstimatorNotFound)


def register_estimator(name: str, needs: frozenset = frozenset(), group_relative: bool = False) -> Callable:
    """Register `fn(batch, algo_cfg, learner_tensors) -> Tensor | Estimate` under `name`.

    needs: learner tensors to compute besides old_logprobs, entropy and progress:
    "hidden" (final-layer hidden states [B, T, d]) and "vocab_logprobs" ([B, T, V], memory-heavy).
    group_relative: the advantage compares a response with the others of its prompt, so a group of one
    has none (rollout.group_size=1 is refused)."""
    return ESTIMATORS.register(name, needs=frozenset(needs), group_relative=group_relative)


def as_estimate(out) -> Estimate:
    return out if isinstance(out, Estimate) else Estimate(out)


def _broadcast(adv: torch.Tensor, batch) -> torch.Tensor:
    return adv[:, None] * batch.gen_mask.to(adv.dtype)


def _grpo_sample(batch, cfg) -> torch.Tensor:
    return group_advantages(batch.rewards, batch.group_index, cfg.std_ddof, cfg.adv_eps, cfg.scale_by_std)


@register_estimator("grpo", group_relative=True)
def grpo(batch, cfg, learner_tensors: dict) -> torch.Tensor:
    """GRPO: the group advantage (r - mu) / (sigma + eps) broadcast over response tokens."""
    return _broadcast(_grpo_sample(batch, cfg), batch)


@register_estimator("drgrpo", group_relative=True)
def drgrpo(batch, cfg, learner_tensors: dict) -> torch.Tensor:
    """Dr.GRPO (arXiv 2503.20783): r - mu, no division by the group std (scale_by_std ignored)."""
    return _broadcast(group_advantages(batch.rewards, batch.group_index, cfg.std_ddof, cfg.adv_eps, False), batch)


@register_estimator("rloo", group_relative=True)
def rloo(batch, cfg, learner_tensors: dict) -> torch.Tensor:
    return _broadcast(rloo_advantages(batch.rewards, batch.group_index), batch)


@register_estimator("tempo", group_relative=True)
def tempo(batch, cfg, learner_tensors: dict) -> torch.Tensor:
    """TEMPO (reconstructed, see algos/tempo.py): GRPO plus branch-gated prefix-tree TD. On a multi-turn
    trajectory the tree keys on every response id, observations and template tokens included (fixed edges:
    responses whose sampled tokens agree, given the same tool outputs, share their nodes; a different tool
    output branches them), and only the sampled tokens get an advantage (`gen_mask`)."""
    adv = tempo_advantages(batch.response_ids.cpu(), batch.response_mask.cpu(), batch.rewards.cpu(), batch.group_index.cpu(),
                           cfg.std_ddof, cfg.adv_eps, cfg.tempo.td_weight)
    return adv.to(batch.response_ids.device) * batch.gen_mask.to(adv.dtype)


@register_estimator("thr", needs=frozenset(("hidden", "vocab_logprobs")), group_relative=True)
def thr(batch, cfg, learner_tensors: dict) -> Estimate:
    """THR (reconstructed, see algos/thr.py): GRPO advantages reweighted by token hidden reward."""
    t = cfg.thr
    adv, metrics = thr_advantages(
        _grpo_sample(batch, cfg), learner_tensors["hidden"], learner_tensors["vocab_logprobs"], batch.response_ids,
        batch.gen_mask, batch.correct if batch.correct is not None else batch.rewards, batch.group_index,
        t.p, t.tau_beta, t.only_dominant,
    )
    return Estimate(adv, metrics=metrics)


@register_estimator("d3s", group_relative=True)
def d3s(batch, cfg, learner_tensors: dict) -> Estimate:
    """D3S (reconstructed, see algos/d3s.py): GRPO advantages on a max-variance subset of samples and
    the top |A|*H share of their tokens, relaxed linearly over training."""
    c = cfg.d3s
    adv = _grpo_sample(batch, cfg)
    token_adv = _broadcast(adv, batch)
    keep, metrics = d3s_masks(adv, token_adv, learner_tensors["entropy"], batch.gen_mask, batch.group_index,
                              learner_tensors.get("progress", 0.0), c.n_init, c.n_final, c.k_init, c.k_final, c.per_group,
                              c.token_scope)
    return Estimate(token_adv, loss_mask=keep.to(torch.float32), metrics=metrics)


@register_estimator("tw_grpo", needs=frozenset(("vocab_logprobs",)), group_relative=True)
def tw_grpo(batch, cfg, learner_tensors: dict) -> Estimate:
    """TW-GRPO (see algos/token_weighting.py): GRPO advantages, per-position weights in [1, alpha]."""
    w = tw_token_weights(learner_tensors["vocab_logprobs"], batch.gen_mask, batch.group_index, cfg.tw.alpha)
    metrics = {"tw/weight_mean": float(w[batch.gen_mask.bool()].mean())}
    return Estimate(grpo(batch, cfg, learner_tensors), token_weights=w, metrics=metrics)


def resolve_estimator(name: str) -> Callable:
    """A registered name, an entry point (group `rlreason.estimators`) or `package.module:function`
    from the user's own code (its optional `needs` attribute is honoured)."""
    fn = ESTIMATORS.get(name)
    if not callable(fn):
        raise EstimatorNotFound(f"algo.estimator={name!r} is not callable")
    if not hasattr(fn, "needs"):
        fn.needs = frozenset()
    return fn
