"""Rewards: which verifiers score a response, with what weight, and the pool that runs them.

reward = sum_v weight_v * score_v over the reward plan's verifiers. A curriculum that shapes rewards
(the length budget) replaces the accuracy and format terms with its own; the other verifiers' terms
are added to it. DAPO's overlong penalty is added when `algo.overlong_shaping` is on.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch

from rewards import load
from rewards.pool import InlineRunner, Job, VerifierPool
from rewards.sandbox import Policy
from rlreason.algos.filtering import group_pass_rates
from rlreason.algos.shaping import overlong_penalty
from rlreason.batch import RolloutBatch
from rlreason.config import VerifierEntry
from rlreason.orchestrator.verifier_health import VerifierHealth
from rlreason.telemetry.memory import process_peak_rss_mb

log = logging.getLogger(__name__)


class RewardPlan:
    """The verifiers of a run: ``reward.verifiers`` when given; else ``reward.verifier`` (weight 1,
    accuracy) plus ``format`` with ``reward.format_weight`` when that is non-zero."""

    def __init__(self, entries: list, accuracy_index: int):
        self.entries = entries
        self.accuracy = entries[accuracy_index]
        named = [e for e in entries if e.name == "format"]
        self.format_entry = named[0] if named else VerifierEntry("format", weight=0.0)

    @classmethod
    def from_config(cls, reward_cfg) -> "RewardPlan":
        r = reward_cfg
        if r.verifiers:
            entries = list(r.verifiers)
            marked = [i for i, e in enumerate(entries) if e.accuracy]
            return cls(entries, marked[0] if marked else 0)
        entries = [VerifierEntry(r.verifier, 1.0, accuracy=True)]
        if r.format_weight:
            entries.append(VerifierEntry("format", r.format_weight))
        return cls(entries, 0)

    def validators(self) -> list:
        """The verifiers' ``validate(sample)`` functions, for checking data rows as they load."""
        found = (load(e.name, dict(e.args)).validate for e in self.entries)
        return [v for v in found if v is not None]


class Scorer:
    """The verifier pool (sandboxed processes, or inline for trusted verifiers) and the reward plan."""

    def __init__(self, reward_cfg, algo_cfg, max_new_tokens: int, bad_rows: int = 0, run_dir: Path | None = None):
        r = reward_cfg
        self.health = VerifierHealth(run_dir)
        self.plan = RewardPlan.from_config(r)
        self.algo = algo_cfg
        self.max_new_tokens = max_new_tokens
        self.bad_rows = bad_rows  # logged with every step (task.bad_rows=skip)
        if r.isolation == "inline":
            log.warning("reward.isolation=inline: verifiers run inside the trainer with no limits and no isolation "
                        "(for trusted verifiers only)")
            self.pool = InlineRunner(r.timeout_s, r.async_concurrency)
        else:
            sandbox = None
            if r.isolation == "sandbox":  # the run directory (checkpoints, metrics) is hidden from verifiers
                sandbox = Policy(scratch_mb=r.scratch_mb, max_processes=r.max_processes,
                                 hidden=[str(Path(run_dir).resolve())] if run_dir is not None else [])
            self.pool = VerifierPool(r.num_workers, r.timeout_s, memory_limit_mb=r.memory_limit_mb, cpu_limit_s=r.cpu_limit_s,
                                     async_concurrency=r.async_concurrency, sandbox=sandbox)

    def score(self, batch: RolloutBatch, texts: list[str], samples: list[dict], shape: Callable | None = None,
              where: str = "") -> dict:
        """Set `batch.rewards` and `batch.correct` (the accuracy verifier's score); return the metrics.
        `shape(correct, format_score, lengths)`: a curriculum's reward in place of accuracy and format.
        `where` (e.g. "step 12") labels verifier failures in the log and verifier_errors.jsonl."""
        plan = self.plan
        entries = plan.entries + ([plan.format_entry] if shape and plan.format_entry not in plan.entries else [])
        jobs = [Job(e.name, texts, samples, dict(e.args), e.timeout_s) for e in entries]
        t0 = time.perf_counter()
        results = dict(zip((e.name for e in entries), self.pool.score(jobs)))
        t_verify = time.perf_counter() - t0
        self.health.record(where, results, samples)
        scores = {name: torch.tensor([x.score for x in res], dtype=torch.float32) for name, res in results.items()}
        n = len(texts)
        correct = scores[plan.accuracy.name]
        lengths = batch.response_mask.sum(-1)
        shaped = shape(correct, scores[plan.format_entry.name], lengths) if shape else None
        if shaped is None:
            rewards = sum(e.weight * scores[e.name] for e in plan.entries)
        else:
            rewards = shaped + sum((e.weight * scores[e.name] for e in plan.entries
                                    if e is not plan.accuracy and e.name != plan.format_entry.name), torch.zeros(n))
        if self.algo.overlong_shaping:
            rewards += overlong_penalty(lengths, self.max_new_tokens, self.algo.overlong_cache)
        batch.rewards, batch.correct = rewards, correct
        return {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()) if n > 1 else 0.0,
            "reward/zero_std_group_frac": zero_std_group_frac(rewards, batch.group_index),
            "reward/nonzero_grad_sample_frac": nonzero_grad_sample_frac(rewards, batch.group_index),
            **pass_rate_histogram(correct, batch.group_index),
            "accuracy/train": float(correct.mean()),
            **{f"reward/{name}/mean": float(v.mean()) for name, v in scores.items()},
            **verifier_metrics(results, self.pool, t_verify),
            "data/bad_rows": self.bad_rows,
        }

    def accuracy(self, texts: list[str], samples: list[dict], where: str = "eval") -> list[float]:
        """The accuracy verifier's score of each text (evaluation)."""
        acc = self.plan.accuracy
        results = self.pool.score([Job(acc.name, texts, samples, dict(acc.args), acc.timeout_s)])[0]
        self.health.record(where, {acc.name: results}, samples)
        return [r.score for r in results]

    def peak_memory(self) -> dict:
        peaks = [m for m in map(process_peak_rss_mb, getattr(self.pool, "pids", list)()) if m is not None]
        return {"memory/verifier_peak_rss_mb": max(peaks)} if peaks else {}

    def close(self) -> None:
        self.pool.close()


def verifier_metrics(results: dict, pool, seconds: float) -> dict:
    """Timeouts, errors and latency of one scoring round, overall and per verifier."""
    flat = [x for res in results.values() for x in res]
    lat = sorted(x.latency_s for x in flat)
    out = {
        "verifier/timeout_rate": sum(x.status == "timeout" for x in flat) / max(len(flat), 1),
        "verifier/error_rate": sum(x.status == "error" for x in flat) / max(len(flat), 1),
        "verifier/latency_mean_s": sum(lat) / max(len(lat), 1),
        "verifier/latency_p95_s": lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0,
        "verifier/latency_max_s": lat[-1] if lat else 0.0,
        "verifier/restarts": pool.restarts,
        "throughput/verifier_per_s": len(flat) / max(seconds, 1e-9),
    }
    if len(results) > 1:
        for name, res in results.items():
            out[f"verifier/{name}/timeout_rate"] = sum(x.status == "timeout" for x in res) / max(len(res), 1)
            out[f"verifier/{name}/error_rate"] = sum(x.status == "error" for x in res) / max(len(res), 1)
    return out


def zero_std_group_frac(rewards: torch.Tensor, group_index: torch.Tensor) -> float:
    """Share of groups whose rewards are all equal (no GRPO gradient); groups may differ in size."""
    groups = torch.unique(group_index)
    flat = sum(bool((rewards[group_index == g] == rewards[group_index == g][0]).all()) for g in groups)
    return flat / max(len(groups), 1)


def nonzero_grad_sample_frac(rewards: torch.Tensor, group_index: torch.Tensor) -> float:
    """Share of responses in groups whose rewards differ (those that carry a GRPO gradient)."""
    live = 0
    for g in torch.unique(group_index):
        r = rewards[group_index == g]
        live += int(r.numel()) if bool((r != r[0]).any()) else 0
    return live / max(rewards.numel(), 1)


PASS_RATE_BINS = (("0", 0.0, 0.0), ("0-25", 0.0, 0.25), ("25-50", 0.25, 0.5), ("50-75", 0.5, 0.75), ("75-100", 0.75, 1.0),
                  ("100", 1.0, 1.0))


def pass_rate_histogram(correct: torch.Tensor, group_index: torch.Tensor) -> dict:
    """Share of groups by pass rate: exactly 0, (0, .25], (.25, .5], (.5, .75], (.75, 1), exactly 1."""
    _, rates = group_pass_rates(correct, group_index)
    out = {}
    for name, lo, hi in PASS_RATE_BINS:
        if lo == hi:
            hit = rates == lo
        elif hi == 1.0:
            hit = (rates > lo) & (rates < 1.0)
        else:
            hit = (rates > lo) & (rates <= hi)
        out[f"curriculum/pass_rate/{name}"] = float(hit.double().mean())
    return out
