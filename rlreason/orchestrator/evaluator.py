"""Held-out evaluation (`rlreason/evaluation.py` for the metrics): greedy accuracy always; with
`eval_sampled` also pass@1 and pass@k from k = `eval_samples` (0: `rollout.group_size`) samples per
problem at the training temperature, overall and per category. Under a length budget, the step's
budget goes into the prompt and sets the cap. Includes `eval/response_length` (greedy).

The initial policy's evaluation is the same in every run that starts from it: with `eval_cache` it is
read from `~/.cache/rlreason/evals` when the policy, prompts, sampling settings and verifier match.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from rlreason import eval_cache
from rlreason.assets import cache_root
from rlreason.evaluation import eval_metrics
from rlreason.rollout.episodes import env_metrics

log = logging.getLogger(__name__)
GREEDY_SEED = 0
SAMPLED_SEED = 999_983  # one fixed seed for every evaluation of every run: differences come from the weights


class Evaluator:
    def __init__(self, cfg, problems: list, fleet, scorer, prompt_format, curriculum, policy_path: Path):
        self.cfg, self.problems, self.fleet, self.scorer = cfg, problems, fleet, scorer
        self.prompt, self.curriculum, self.policy_path = prompt_format, curriculum, policy_path

    def __call__(self, step: int = 0) -> dict:
        cfg = self.cfg
        budget = self.curriculum.budget(max(step, 1))
        max_new = self.curriculum.cap(budget) if budget else None
        prompts = [self.prompt(p, budget) for p in self.problems]
        samples = [p.as_sample() for p in self.problems]
        k = cfg.eval_samples or cfg.rollout.group_size
        cached = None
        if step == 0 and cfg.eval_cache:
            acc = self.scorer.plan.accuracy
            settings = {"rollout": dataclasses.asdict(cfg.rollout), "k": k if cfg.eval_sampled else 0, "max_new": max_new,
                        "verifier": [acc.name, dict(acc.args)], "categories": [p.category for p in self.problems]}
            cached = (cache_root() / "evals", eval_cache.initial_eval_key(self.policy_path, prompts, samples, settings))
            hit = eval_cache.load(*cached)
            if hit is not None:
                log.info("initial evaluation read from the cache (%s.json; eval_cache=false recomputes it)", cached[1])
                return hit

        env_samples = samples if cfg.rollout.env != "single_turn" else None
        batch, texts = self.fleet.generate(prompts, seed=GREEDY_SEED, greedy=True, max_new_tokens=max_new, samples=env_samples)
        greedy = self.scorer.accuracy(texts, samples, where=f"eval at step {step}")
        metrics = {"eval/response_length": float(batch.response_mask.sum(-1).float().mean())}
        if batch.env_stats is not None:
            metrics.update(env_metrics(batch.env_stats, float(batch.gen_mask.sum()), prefix="eval/env"))
        sampled = None
        if cfg.eval_sampled:
            batch, texts = self.fleet.generate(prompts, seed=SAMPLED_SEED, n=k, max_new_tokens=max_new, samples=env_samples)
            flat = self.scorer.accuracy(texts, [s for s in samples for _ in range(k)], where=f"sampled eval at step {step}")
            sampled = [flat[i * k:(i + 1) * k] for i in range(len(prompts))]
            metrics["eval/sampled_response_length"] = float(batch.response_mask.sum(-1).float().mean())
        metrics.update(eval_metrics([p.category for p in self.problems], greedy, sampled))
        if cached is not None:
            eval_cache.store(*cached, metrics)
        return metrics
