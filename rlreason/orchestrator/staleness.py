"""Bounded staleness for `trainer.mode=async`: which future steps may be generated now, and which
generated groups are too old to train on. Pure functions; `async_rollouts.py` applies them.

Versions count learner updates: the weights after step s are version s, so step s trains from
version s - 1 (v_L). A token produced by version v_t has staleness v_L - v_t; a sample's staleness is
that of its oldest token, s = v_L - min_t v_t; a group is as stale as its stalest sample and is kept or
dropped whole (its advantages are relative to each other).

Gate. The rollout workers generate with the published weights (version v_pub) or newer, so the
samples of step s have staleness at most (s - 1) - v_pub. Generation of step s may therefore start
only while
    s - 1 - v_pub <= max_staleness                                                    (1)
This is AReaL's admission rule "accepted + running < (eta + v + 1) * B" with B groups per step, counted
in whole steps: group n belongs to step n // B + 1. max_staleness = 0 admits step s only once step
s - 1's weights are published: synchronous training, batch for batch.

Consume check. (1) is the guarantee while every worker serves what was published. A worker that lost
its weights (a restart) or a future change to the gate could break it silently; so before a step
trains, every group is checked against the bound again, and stale ones are dropped and counted
(`async/dropped_stale`), never trained on.
"""

from __future__ import annotations

import torch


def may_start(step: int, published_version: int, max_staleness: int) -> bool:
    """(1): may generation for `step` start while the workers serve `published_version`?"""
    return step - 1 - published_version <= max_staleness


def sample_staleness(versions: torch.Tensor, learner_version: int) -> torch.Tensor:
    """[B] staleness of each sample: learner_version - the oldest version among its tokens (`versions`
    [B, T], -1 on padding; a sample without a response token has staleness 0)."""
    generated = versions >= 0
    big = torch.iinfo(versions.dtype).max
    oldest = torch.where(generated, versions, torch.full_like(versions, big)).min(dim=1).values.to(torch.long)
    return torch.where(generated.any(dim=1), learner_version - oldest, torch.zeros_like(oldest))


def fresh_groups(staleness: torch.Tensor, group_index: torch.Tensor, max_staleness: int) -> torch.Tensor:
    """[B] bool: samples whose whole group is within the bound (a group is kept or dropped whole)."""
    stale = staleness > max_staleness
    bad = torch.zeros(int(group_index.max()) + 1 if group_index.numel() else 0, dtype=torch.bool)
    bad.index_put_((group_index,), stale, accumulate=True)
    return ~bad[group_index]


def staleness_metrics(versions: torch.Tensor, learner_version: int) -> dict:
    """async/* metrics of a batch about to train from `learner_version`: per-sample staleness mean and max,
    per-token staleness mean, the fraction of tokens an older policy produced, the largest spread of
    versions within one sample and the fraction of samples with more than one (> 0 only with partial rollouts)."""
    generated = versions >= 0
    per_sample = sample_staleness(versions, learner_version).float()
    token_staleness = (learner_version - versions.to(torch.long))[generated].float()
    big = torch.iinfo(versions.dtype).max
    newest = torch.where(generated, versions, torch.full_like(versions, -1)).max(dim=1).values
    oldest = torch.where(generated, versions, torch.full_like(versions, big)).min(dim=1).values
    span = torch.where(generated.any(dim=1), newest - oldest, torch.zeros_like(newest))
    n_tokens = max(int(generated.sum()), 1)
    return {
        "async/staleness_mean": float(per_sample.mean()) if per_sample.numel() else 0.0,
        "async/staleness_max": float(per_sample.max()) if per_sample.numel() else 0.0,
        "async/token_staleness_mean": float(token_staleness.sum()) / n_tokens,
        "async/old_policy_token_frac": float((token_staleness > 0).sum()) / n_tokens,
        "async/max_version_span": float(span.max()) if span.numel() else 0.0,
        "async/partial_frac": float((span > 0).float().mean()) if span.numel() else 0.0,  # samples from 2+ versions
    }
