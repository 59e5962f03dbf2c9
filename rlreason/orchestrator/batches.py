"""One step's training batch: the curriculum picks prompts (and per-prompt rollout counts and a token
budget), the fleet samples, the scorer rewards, the difficulty filter keeps groups, and the curriculum
learns from the result.

With `algo.dynamic_sampling`, groups whose pass rate falls outside [filter_low, filter_high] are
dropped and new prompts are drawn until the step has `rollout.prompts_per_step` groups or
`algo.filter_max_rounds` rounds have run; then it trains on what it has (a round that keeps nothing
at all trains on its last round unfiltered, and says so). Every round's tokens count towards
`rollout_token_budget`, kept or not.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from curricula.strategies import build_curriculum
from rlreason.algos.filtering import group_pass_rates, keep_groups
from rlreason.batch import RolloutBatch
from rlreason.data.sampler import PromptSampler

log = logging.getLogger(__name__)


@dataclass
class StepBatch:
    batch: RolloutBatch
    indices: list[int]  # the training problems of its groups, in group order
    metrics: dict  # reward/*, verifier/*, curriculum/*
    rollout_s: float
    reward_s: float


class PromptFormat:
    """A problem's prompt as the policy reads it: the budget prefix under a length curriculum that puts
    it in the prompt, then the model's chat template for instruct models."""

    def __init__(self, tokenizer, chat_template: bool, budget_in_prompt: bool):
        self.tokenizer, self.chat_template, self.budget_in_prompt = tokenizer, chat_template, budget_in_prompt

    def __call__(self, problem, budget: int | None) -> str:
        text = problem.prompt
        if budget is not None and self.budget_in_prompt:
            text = f"budget {budget}: {text}"
        if self.chat_template:
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text


class BatchBuilder:
    def __init__(self, cfg, train: list, fleet, scorer, prompt_format: PromptFormat):
        self.cfg = cfg
        self.train, self.fleet, self.scorer, self.prompt = train, fleet, scorer, prompt_format
        self.sampler = PromptSampler(len(train), cfg.rollout.prompts_per_step, seed=cfg.seed)
        self.curriculum = build_curriculum(cfg, self.sampler, train)
        self.rollout_tokens = 0  # response tokens generated for training so far (all rounds, kept or not)

    def next(self, step: int) -> StepBatch:
        """The scored batch of `step`; the curriculum observes it before it is returned."""
        out = self._collect(step)
        out.metrics.update(self.curriculum.observe(step, out.indices, out.batch))
        return out

    def state(self) -> dict:
        """The data position now: sampler, curriculum, tokens so far (checkpoints and metrics)."""
        return {"sampler": self.sampler.state_dict(), "curriculum": self.curriculum.state_dict(),
                "rollout_tokens": self.rollout_tokens, "consumed": self.sampler.consumed, "epoch": self.sampler.epoch}

    def load_state(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if "curriculum" in state:
            self.curriculum.load_state_dict(state["curriculum"])
        self.rollout_tokens = state.get("rollout_tokens", 0)

    def _collect(self, step: int) -> StepBatch:
        cfg, a = self.cfg, self.cfg.algo
        G, want = cfg.rollout.group_size, cfg.rollout.prompts_per_step
        kept_parts, kept_indices = [], []
        rounds, seen_groups, passed, t_rollout, t_reward = 0, 0, 0, 0.0, 0.0
        reward_metrics = {}
        cur = self.curriculum
        budget = cur.budget(step)
        max_new = cur.cap(budget) if budget else cfg.rollout.max_new_tokens
        shape = (lambda correct, fmt, lengths: cur.shape_rewards(correct, fmt, lengths, budget)) if budget is not None else None
        while True:
            rounds += 1
            indices = cur.prompts(step, rounds - 1)
            counts = cur.rollouts(step, indices) or [G] * len(indices)
            t0 = time.perf_counter()
            seed = cfg.seed * 1_000_003 + step + 7_919 * (rounds - 1)
            prompts = [self.prompt(self.train[i], budget) for i in indices]
            batch, texts = self.fleet.generate(prompts, seed=seed, n=counts, max_new_tokens=max_new)
            t_rollout += time.perf_counter() - t0
            self.rollout_tokens += int(batch.response_mask.sum())  # every round counts, kept or dropped
            t0 = time.perf_counter()
            samples = [self.train[i].as_sample() for i, c in zip(indices, counts) for _ in range(c)]
            round_metrics = self.scorer.score(batch, texts, samples, shape, where=f"step {step}")
            t_reward += time.perf_counter() - t0
            if rounds == 1:
                reward_metrics = round_metrics
            if not a.dynamic_sampling:
                return StepBatch(batch, indices, reward_metrics, t_rollout, t_reward)
            batch.group_index = batch.group_index + seen_groups
            seen_groups += len(indices)
            keep = keep_groups(batch.correct, batch.group_index, a.filter_low, a.filter_high, a.filter_inclusive)
            groups, _ = group_pass_rates(batch.correct, batch.group_index)
            passed += int(keep.sum())
            for g, k, i in zip(groups.tolist(), keep.tolist(), indices):
                if k and len(kept_indices) < want:
                    kept_parts.append(batch.select(torch.nonzero(batch.group_index == g).flatten()))
                    kept_indices.append(i)
            if len(kept_indices) >= want or rounds >= a.filter_max_rounds:
                break
        reward_metrics.update({
            "curriculum/filter_rounds": rounds,
            "curriculum/kept_frac": passed / seen_groups,  # share of generated groups inside the band
            "curriculum/short_batch": float(len(kept_indices) < want),
        })
        if not kept_parts:  # nothing passed the band: train on the last round as it is (zero-signal step)
            log.warning("step %d: no group passed the filter band in %d rounds; training on the last round unfiltered", step, rounds)
            return StepBatch(batch, indices, reward_metrics, t_rollout, t_reward)
        out = RolloutBatch.concat(kept_parts, self.fleet.pad_id)
        # renumber the kept groups 0..n-1 in order
        _, out.group_index = torch.unique_consecutive(out.group_index, return_inverse=True)
        return StepBatch(out, kept_indices, reward_metrics, t_rollout, t_reward)
